//! The spec's `template`: a user message built from a CSV row's columns, as in
//! `"Title: {title}\n\n{body}"`. `{{` and `}}` stand for literal braces.

/// One piece of a template: text as written, or the value of a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as it is (braces already unescaped).
    Literal(String),
    /// `{name}`: the value of the column `name`.
    Column(String),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`; the error says what is wrong and where (an unclosed `{`, a lone
    /// `}`, an empty `{}`, a `{` inside a placeholder, no placeholder at all).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            match c {
                '{' if chars.next_if(|&(_, next)| next == '{').is_some() => literal.push('{'),
                '}' if chars.next_if(|&(_, next)| next == '}').is_some() => literal.push('}'),
                '}' => {
                    return Err(format!(
                        "a `}}` at character {at} closes no placeholder; write `}}}}` for a literal brace"
                    ));
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some((_, '}')) => break,
                            Some((_, '{')) | None => {
                                return Err(format!(
                                    "the placeholder opened at character {at} is not closed; \
                                     write `{{{{` for a literal brace"
                                ));
                            }
                            Some((_, c)) => name.push(c),
                        }
                    }
                    if name.is_empty() {
                        return Err(format!(
                            "the placeholder at character {at} is empty; name a column, as in `{{title}}`"
                        ));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Column(name));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        if !pieces.iter().any(|p| matches!(p, Piece::Column(_))) {
            return Err(
                "it has no `{column}` placeholder, so every row would send the same text".into(),
            );
        }
        Ok(Self { pieces })
    }

    /// The pieces in order.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_escaped_braces() {
        let template = Template::parse("Title: {title}\n\n{body} {{x}} {title}").unwrap();
        assert_eq!(
            template.pieces(),
            [
                Piece::Literal("Title: ".into()),
                Piece::Column("title".into()),
                Piece::Literal("\n\n".into()),
                Piece::Column("body".into()),
                Piece::Literal(" {x} ".into()),
                Piece::Column("title".into()),
            ]
        );
        assert!(Template::parse("{Product name}").is_ok());
    }

    #[test]
    fn broken_placeholders_say_what_is_wrong() {
        for (text, reason) in [
            ("Title: {title", "not closed"),
            ("{a{b}}", "not closed"),
            ("a } b {c}", "closes no placeholder"),
            ("{} {a}", "empty"),
            ("no columns {{here}}", "no `{column}`"),
        ] {
            let err = Template::parse(text).unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}
