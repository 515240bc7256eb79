//! Converse records: a Converse request is checked and turned into the Anthropic Messages
//! body it means (so that the shared emulated model answers it, whatever the model), and
//! the Messages answer is turned back into a Converse response.

use serde_json::{Map, Value, json};

/// The top-level fields of a Converse request (`modelId` travels with the job).
const FIELDS: [&str; 9] = [
    "messages",
    "system",
    "inferenceConfig",
    "toolConfig",
    "additionalModelRequestFields",
    "additionalModelResponseFieldPaths",
    "guardrailConfig",
    "promptVariables",
    "requestMetadata",
];

/// The Messages body of a Converse request, or what is wrong with it.
pub(super) fn to_messages_params(
    request: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    if let Some(extra) = request.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(format!("#: extraneous key [{extra}] is not permitted"));
    }
    let mut params = Map::new();
    let messages = match request.get("messages").and_then(Value::as_array) {
        Some(messages) if !messages.is_empty() => messages,
        _ => return Err("messages: at least one message is required".to_string()),
    };
    if messages[0].get("role").and_then(Value::as_str) != Some("user") {
        return Err("messages: a conversation must start with a user message".to_string());
    }
    let mut translated = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role,
            _ => {
                return Err(format!(
                    "messages.{index}.role: must be 'user' or 'assistant'"
                ));
            }
        };
        let content = blocks(message.get("content"), &format!("messages.{index}.content"))?;
        if content.is_empty() {
            return Err(format!(
                "messages.{index}.content: at least one content block is required"
            ));
        }
        translated.push(json!({"role": role, "content": content}));
    }
    params.insert("messages".into(), Value::Array(translated));
    if let Some(system) = request.get("system") {
        params.insert(
            "system".into(),
            Value::Array(blocks(Some(system), "system")?),
        );
    }
    if let Some(config) = request.get("inferenceConfig") {
        inference_config(config, &mut params)?;
    }
    if let Some(config) = request.get("toolConfig") {
        tool_config(config, &mut params)?;
    }
    Ok(params)
}

/// Converse content blocks as Messages blocks; a `cachePoint` puts `cache_control` on
/// the block before it.
fn blocks(content: Option<&Value>, at: &str) -> Result<Vec<Value>, String> {
    let Some(content) = content.and_then(Value::as_array) else {
        return Err(format!("{at}: expected an array of content blocks"));
    };
    let mut out: Vec<Value> = Vec::new();
    for (index, block) in content.iter().enumerate() {
        let at = format!("{at}.{index}");
        let Some((kind, value)) = block
            .as_object()
            .filter(|b| b.len() == 1)
            .and_then(|b| b.iter().next())
        else {
            return Err(format!("{at}: a content block holds exactly one member"));
        };
        let translated = match kind.as_str() {
            "text" => match value.as_str() {
                Some(text) if !text.is_empty() => json!({"type": "text", "text": text}),
                _ => return Err(format!("{at}.text: expected a non-empty string")),
            },
            "cachePoint" => {
                let Some(last) = out.last_mut() else {
                    return Err(format!(
                        "{at}.cachePoint: a cache point must follow a content block"
                    ));
                };
                last["cache_control"] = json!({"type": "ephemeral"});
                continue;
            }
            "toolUse" => json!({
                "type": "tool_use",
                "id": value.get("toolUseId"),
                "name": value.get("name"),
                "input": value.get("input"),
            }),
            "toolResult" => json!({
                "type": "tool_result",
                "tool_use_id": value.get("toolUseId"),
                "content": value.get("content").map(|c| blocks(Some(c), &format!("{at}.toolResult.content"))).transpose()?,
            }),
            other => return Err(format!("{at}: the emulator does not serve {other} blocks")),
        };
        out.push(translated);
    }
    Ok(out)
}

fn inference_config(config: &Value, params: &mut Map<String, Value>) -> Result<(), String> {
    if let Some(max) = config.get("maxTokens") {
        match max.as_u64() {
            Some(max) if max >= 1 => params.insert("max_tokens".into(), json!(max)),
            _ => {
                return Err(
                    "inferenceConfig.maxTokens: expected an integer of at least 1".to_string(),
                );
            }
        };
    }
    for (field, name) in [("temperature", "temperature"), ("topP", "top_p")] {
        if let Some(value) = config.get(field) {
            match value.as_f64() {
                Some(v) if (0.0..=1.0).contains(&v) => params.insert(name.into(), value.clone()),
                _ => {
                    return Err(format!(
                        "inferenceConfig.{field}: expected a number from 0 to 1"
                    ));
                }
            };
        }
    }
    if let Some(stops) = config.get("stopSequences") {
        params.insert("stop_sequences".into(), stops.clone());
    }
    Ok(())
}

fn tool_config(config: &Value, params: &mut Map<String, Value>) -> Result<(), String> {
    let tools = match config.get("tools").and_then(Value::as_array) {
        Some(tools) if !tools.is_empty() => tools,
        _ => return Err("toolConfig.tools: at least one tool is required".to_string()),
    };
    let mut translated: Vec<Value> = Vec::new();
    for (index, tool) in tools.iter().enumerate() {
        if tool.get("cachePoint").is_some() {
            if let Some(last) = translated.last_mut() {
                last["cache_control"] = json!({"type": "ephemeral"});
            }
            continue;
        }
        let spec = tool.get("toolSpec");
        let name = spec.and_then(|s| s.get("name")).and_then(Value::as_str);
        let schema = spec.and_then(|s| s.pointer("/inputSchema/json"));
        let (Some(name), Some(schema)) = (name, schema) else {
            return Err(format!(
                "toolConfig.tools.{index}: a toolSpec needs a name and inputSchema.json"
            ));
        };
        let mut out = json!({"name": name, "input_schema": schema});
        if let Some(description) = spec.and_then(|s| s.get("description")) {
            out["description"] = description.clone();
        }
        translated.push(out);
    }
    let choice = match config.get("toolChoice") {
        None => None,
        Some(choice) if choice.get("auto").is_some() => Some(json!({"type": "auto"})),
        Some(choice) if choice.get("any").is_some() => Some(json!({"type": "any"})),
        Some(choice) => match choice.pointer("/tool/name").and_then(Value::as_str) {
            Some(name) if translated.iter().any(|t| t["name"] == name) => {
                Some(json!({"type": "tool", "name": name}))
            }
            Some(name) => {
                return Err(format!(
                    "toolConfig.toolChoice: the tool {name} is not in toolConfig.tools"
                ));
            }
            None => {
                return Err("toolConfig.toolChoice: expected one of auto, any or tool".to_string());
            }
        },
    };
    params.insert("tools".into(), Value::Array(translated));
    if let Some(choice) = choice {
        params.insert("tool_choice".into(), choice);
    }
    Ok(())
}

/// The Converse response for an Anthropic Messages answer.
pub(super) fn to_converse_response(message: &Value) -> Value {
    let content: Vec<Value> = message["content"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|block| match block["type"].as_str() {
            Some("tool_use") => json!({"toolUse": {
                "toolUseId": block["id"],
                "name": block["name"],
                "input": block["input"],
            }}),
            _ => json!({"text": block["text"]}),
        })
        .collect();
    let stop_reason = match message["stop_reason"].as_str() {
        Some("refusal") => "content_filtered",
        Some(other) => other,
        None => "end_turn",
    };
    let usage = &message["usage"];
    let count = |field: &str| usage[field].as_u64().unwrap_or(0);
    let (input, output) = (count("input_tokens"), count("output_tokens"));
    let (read, write) = (
        count("cache_read_input_tokens"),
        count("cache_creation_input_tokens"),
    );
    let mut usage = json!({
        "inputTokens": input,
        "outputTokens": output,
        "totalTokens": input + output + read + write,
    });
    if read + write > 0 {
        usage["cacheReadInputTokens"] = json!(read);
        usage["cacheWriteInputTokens"] = json!(write);
    }
    json!({
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop_reason,
        "usage": usage,
        // A made-up but steady latency: a base plus a little per answer token.
        "metrics": {"latencyMs": 200 + 4 * output},
    })
}
