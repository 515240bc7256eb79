//! The models the emulated Message Batches API knows, and which of them take
//! structured outputs (`output_config.format`).

/// One model id (alias or dated snapshot) and whether it takes `output_config.format`.
pub(super) struct Model {
    pub(super) id: &'static str,
    pub(super) output_config: bool,
}

const fn model(id: &'static str, output_config: bool) -> Model {
    Model { id, output_config }
}

/// Current Claude API model ids, aliases with their snapshots, as the models overview
/// and the structured-outputs guide list them (checked 2026-11). Structured outputs
/// are generally available on Claude 4.5 and later; Opus 4.1 had them only as a beta.
pub(super) const MODELS: &[Model] = &[
    model("claude-opus-4-7", true),
    model("claude-opus-4-6", true),
    model("claude-sonnet-4-6", true),
    model("claude-opus-4-5", true),
    model("claude-opus-4-5-20251101", true),
    model("claude-sonnet-4-5", true),
    model("claude-sonnet-4-5-20250929", true),
    model("claude-haiku-4-5", true),
    model("claude-haiku-4-5-20251001", true),
    model("claude-opus-4-1", false),
    model("claude-opus-4-1-20250805", false),
    model("claude-opus-4-0", false),
    model("claude-opus-4-20250514", false),
    model("claude-sonnet-4-0", false),
    model("claude-sonnet-4-20250514", false),
    model("claude-3-7-sonnet-latest", false),
    model("claude-3-7-sonnet-20250219", false),
    model("claude-3-5-haiku-latest", false),
    model("claude-3-5-haiku-20241022", false),
    model("claude-3-haiku-20240307", false),
];

/// The model named `id`, if the API knows it.
pub(super) fn find(id: &str) -> Option<&'static Model> {
    MODELS.iter().find(|model| model.id == id)
}
