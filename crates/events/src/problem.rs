//! What is wrong with an order: one typed problem per field, shared by the validation
//! that finds them and the `OrderRejected` event that reports them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What is wrong with one field of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    InvalidId,
    NoLines,
    TooManyLines,
    DuplicateSku,
    QuantityOutOfRange,
    NegativeUnitPrice,
    TotalMismatch,
    AmountOverflow,
    InvalidCurrency,
    MissingPaymentToken,
}

/// One problem with an order: the field (a JSON path), a typed code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    pub field: String,
    pub code: ProblemCode,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(
        field: impl Into<String>,
        code: ProblemCode,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            field: printable(field.into()),
            code,
            message: printable(message.into()),
        }
    }
}

/// The longest problem message or field kept; a sentence, not a payload.
const MAX_PROBLEM_TEXT: usize = 200;

/// Problems quote what they were sent: control characters become spaces (a line break
/// in a reply header or an event breaks its reader) and the text is cut to a sentence.
pub(crate) fn printable(text: String) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_PROBLEM_TEXT {
        let mut cut = MAX_PROBLEM_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// At most this many problems are listed: an order with thousands of bad lines must still
/// fit one reply and one `OrderRejected` (the server's max_payload is 1 MiB).
pub const MAX_PROBLEMS: usize = 20;

/// Keeps the first [`MAX_PROBLEMS`] − 1 problems and says how many more there were.
pub fn cap_problems(mut problems: Vec<Problem>) -> Vec<Problem> {
    if problems.len() <= MAX_PROBLEMS {
        return problems;
    }
    let more = problems.len() - (MAX_PROBLEMS - 1);
    let first_dropped = problems[MAX_PROBLEMS - 1].clone();
    problems.truncate(MAX_PROBLEMS - 1);
    problems.push(Problem {
        field: first_dropped.field,
        code: first_dropped.code,
        message: format!("and {more} more problems not listed"),
    });
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_a_problem() {
        let p = Problem::new("cur\r\nrency", ProblemCode::InvalidCurrency, "`E\nU\rR`");
        assert!(!p.field.chars().any(char::is_control));
        assert!(!p.message.chars().any(char::is_control));
    }

    #[test]
    fn a_long_message_is_cut() {
        let p = Problem::new("x", ProblemCode::InvalidId, "é".repeat(500));
        assert!(p.message.len() <= MAX_PROBLEM_TEXT + '…'.len_utf8());
    }

    #[test]
    fn thousands_of_problems_are_capped_with_a_count() {
        let many: Vec<Problem> = (0..5000)
            .map(|i| {
                Problem::new(
                    format!("lines[{i}]"),
                    ProblemCode::QuantityOutOfRange,
                    "bad",
                )
            })
            .collect();
        let capped = cap_problems(many);
        assert_eq!(capped.len(), MAX_PROBLEMS);
        assert!(capped[MAX_PROBLEMS - 1].message.contains("4981"));
    }
}
