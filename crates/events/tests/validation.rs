//! Every rule of `OrderPlaced::validate`, asserted on `ProblemCode`s and fields.

mod common;

use std::collections::HashSet;

use common::{line, valid_order};
use shop_events::validation::{MAX_LINES, MAX_PAYMENT_TOKEN_LEN, MAX_QUANTITY};
use shop_events::*;

/// The (field, code) pairs of every problem, or a panic if the order is valid.
fn problems(order: &OrderPlaced) -> HashSet<(String, ProblemCode)> {
    match order.validate() {
        Ok(valid) => panic!("expected problems, the order is valid: {valid:?}"),
        Err(problems) => {
            assert!(!problems.is_empty(), "an invalid order lists its problems");
            problems.into_iter().map(|p| (p.field, p.code)).collect()
        }
    }
}

fn only(field: &str, code: ProblemCode) -> HashSet<(String, ProblemCode)> {
    HashSet::from([(field.to_owned(), code)])
}

/// Sets the lines and a total that matches them.
fn with_lines(lines: Vec<OrderLineInput>) -> OrderPlaced {
    let total = lines.iter().map(|l| l.quantity * l.unit_price).sum();
    OrderPlaced {
        lines,
        total,
        ..valid_order()
    }
}

#[test]
fn a_valid_order_becomes_a_typed_valid_order() {
    let valid = valid_order().validate().expect("valid");
    assert_eq!(
        valid,
        ValidOrder {
            order_id: OrderId::parse("o-1001").expect("id"),
            customer_id: CustomerId::parse("c-42").expect("id"),
            currency: Currency::parse("EUR").expect("currency"),
            lines: vec![
                ValidLine {
                    sku: Sku::parse("sku-red-shirt").expect("sku"),
                    quantity: 2,
                    unit_price: Money(1250),
                },
                ValidLine {
                    sku: Sku::parse("sku_blue_mug").expect("sku"),
                    quantity: 1,
                    unit_price: Money(899),
                },
            ],
            total: Money(3399),
            payment_token: "tok_visa".to_owned(),
        }
    );
}

#[test]
fn boundary_values_are_accepted() {
    // One line at the maximum quantity, a free line, exactly MAX_LINES lines.
    let mut lines = vec![line("max", MAX_QUANTITY, 1), line("free", 1, 0)];
    lines.extend((2..MAX_LINES).map(|i| line(&format!("sku-{i}"), 1, 1)));
    assert_eq!(lines.len(), MAX_LINES);
    let valid = with_lines(lines).validate().expect("valid");
    assert_eq!(valid.lines.len(), MAX_LINES);
    assert_eq!(valid.lines[0].quantity, 10_000);

    let longest_token = OrderPlaced {
        payment_token: "t".repeat(MAX_PAYMENT_TOKEN_LEN),
        ..valid_order()
    };
    assert!(longest_token.validate().is_ok());

    let longest_ids = OrderPlaced {
        customer_id: "c".repeat(64),
        ..with_lines(vec![line(&"s".repeat(64), 1, 100)])
    };
    assert!(longest_ids.validate().is_ok());
}

#[test]
fn an_order_without_lines_is_rejected() {
    let order = OrderPlaced {
        lines: vec![],
        total: 0,
        ..valid_order()
    };
    assert_eq!(problems(&order), only("lines", ProblemCode::NoLines));
}

#[test]
fn an_order_with_more_than_100_lines_is_rejected() {
    let lines = (0..=MAX_LINES)
        .map(|i| line(&format!("sku-{i}"), 1, 1))
        .collect();
    assert_eq!(
        problems(&with_lines(lines)),
        only("lines", ProblemCode::TooManyLines)
    );
}

#[test]
fn a_duplicate_sku_is_rejected_on_its_second_line() {
    let order = with_lines(vec![
        line("sku-a", 1, 100),
        line("sku-b", 1, 100),
        line("sku-a", 2, 100),
    ]);
    assert_eq!(
        problems(&order),
        only("lines[2].sku", ProblemCode::DuplicateSku)
    );
}

#[test]
fn a_quantity_of_zero_is_out_of_range() {
    let order = with_lines(vec![line("sku-a", 1, 100), line("sku-b", 0, 100)]);
    assert_eq!(
        problems(&order),
        only("lines[1].quantity", ProblemCode::QuantityOutOfRange)
    );
}

#[test]
fn a_quantity_above_10000_is_out_of_range() {
    let order = with_lines(vec![line("sku-a", MAX_QUANTITY + 1, 100)]);
    assert_eq!(
        problems(&order),
        only("lines[0].quantity", ProblemCode::QuantityOutOfRange)
    );
}

#[test]
fn a_negative_quantity_is_out_of_range() {
    let order = with_lines(vec![line("sku-a", -1, 100), line("sku-b", 1, 100)]);
    assert_eq!(
        problems(&order),
        only("lines[0].quantity", ProblemCode::QuantityOutOfRange)
    );
}

#[test]
fn a_negative_unit_price_is_rejected() {
    let order = with_lines(vec![line("sku-a", 1, 500), line("sku-b", 2, -100)]);
    assert_eq!(
        problems(&order),
        only("lines[1].unit_price", ProblemCode::NegativeUnitPrice)
    );
}

#[test]
fn a_total_that_is_not_the_sum_of_the_lines_is_rejected() {
    for total in [3398, 3400, 0, -3399] {
        let order = OrderPlaced {
            total,
            ..valid_order()
        };
        assert_eq!(problems(&order), only("total", ProblemCode::TotalMismatch));
    }
}

#[test]
fn a_sum_that_overflows_is_rejected() {
    // The product overflows.
    let order = OrderPlaced {
        lines: vec![line("sku-a", 2, i64::MAX)],
        total: 0,
        ..valid_order()
    };
    assert_eq!(problems(&order), only("total", ProblemCode::AmountOverflow));

    // Each product fits but the sum does not.
    let order = OrderPlaced {
        lines: vec![line("sku-a", 1, i64::MAX), line("sku-b", 1, 1)],
        total: i64::MAX,
        ..valid_order()
    };
    assert_eq!(problems(&order), only("total", ProblemCode::AmountOverflow));
}

#[test]
fn a_currency_that_is_not_three_upper_case_letters_is_rejected() {
    for currency in ["eur", "Eur", "EU", "EURO", "", "E1R", "ÉUR"] {
        let order = OrderPlaced {
            currency: currency.to_owned(),
            ..valid_order()
        };
        assert_eq!(
            problems(&order),
            only("currency", ProblemCode::InvalidCurrency),
            "{currency:?}"
        );
    }
}

#[test]
fn an_empty_or_blank_payment_token_is_missing() {
    for token in ["", "   ", "\t\n"] {
        let order = OrderPlaced {
            payment_token: token.to_owned(),
            ..valid_order()
        };
        assert_eq!(
            problems(&order),
            only("payment_token", ProblemCode::MissingPaymentToken)
        );
    }
}

#[test]
fn a_payment_token_longer_than_256_characters_is_rejected() {
    let order = OrderPlaced {
        payment_token: "t".repeat(MAX_PAYMENT_TOKEN_LEN + 1),
        ..valid_order()
    };
    assert_eq!(
        problems(&order),
        only("payment_token", ProblemCode::MissingPaymentToken)
    );
}

#[test]
fn a_bad_customer_id_is_an_invalid_id() {
    let too_long = "c".repeat(65);
    for customer in ["", "c 42", "c.42", "c*", too_long.as_str()] {
        let order = OrderPlaced {
            customer_id: customer.to_owned(),
            ..valid_order()
        };
        assert_eq!(
            problems(&order),
            only("customer_id", ProblemCode::InvalidId),
            "{customer:?}"
        );
    }
}

#[test]
fn a_bad_sku_is_an_invalid_id() {
    let too_long = "s".repeat(65);
    for sku in ["", "sku.a", "sku a", "sku>", too_long.as_str()] {
        let order = with_lines(vec![line("sku-ok", 1, 100), line(sku, 1, 100)]);
        assert_eq!(
            problems(&order),
            only("lines[1].sku", ProblemCode::InvalidId),
            "{sku:?}"
        );
    }
}

#[test]
fn an_order_with_several_problems_reports_all_of_them() {
    let order = OrderPlaced {
        order_id: OrderId::parse("o-1002").expect("id"),
        customer_id: "bad customer".to_owned(),
        currency: "eu".to_owned(),
        lines: vec![
            line("sku.a", 1, 100),
            line("sku-b", 0, 100),
            line("sku-c", 1, -5),
            line("sku-b", 1, 100),
        ],
        total: 1,
        payment_token: String::new(),
    };
    let expected: HashSet<(String, ProblemCode)> = [
        ("customer_id", ProblemCode::InvalidId),
        ("currency", ProblemCode::InvalidCurrency),
        ("payment_token", ProblemCode::MissingPaymentToken),
        ("lines[0].sku", ProblemCode::InvalidId),
        ("lines[1].quantity", ProblemCode::QuantityOutOfRange),
        ("lines[2].unit_price", ProblemCode::NegativeUnitPrice),
        ("lines[3].sku", ProblemCode::DuplicateSku),
        ("total", ProblemCode::TotalMismatch),
    ]
    .into_iter()
    .map(|(field, code)| (field.to_owned(), code))
    .collect();
    assert_eq!(problems(&order), expected);

    let count = order.validate().expect_err("invalid").len();
    assert_eq!(count, expected.len(), "each problem is reported once");
}

#[test]
fn too_many_lines_and_line_problems_are_reported_together() {
    let mut lines: Vec<_> = (0..=MAX_LINES)
        .map(|i| line(&format!("sku-{i}"), 1, 1))
        .collect();
    lines[5].quantity = 0;
    let order = OrderPlaced {
        currency: "usd".to_owned(),
        ..with_lines(lines)
    };
    let codes: HashSet<ProblemCode> = problems(&order).into_iter().map(|(_, c)| c).collect();
    assert_eq!(
        codes,
        HashSet::from([
            ProblemCode::TooManyLines,
            ProblemCode::QuantityOutOfRange,
            ProblemCode::InvalidCurrency,
        ])
    );
}

#[test]
fn problems_serialise_with_snake_case_codes() {
    let problems = OrderPlaced {
        lines: vec![],
        total: 0,
        ..valid_order()
    }
    .validate()
    .expect_err("invalid");
    let json = serde_json::to_value(&problems).expect("serialisable");
    assert_eq!(json[0]["field"], "lines");
    assert_eq!(json[0]["code"], "no_lines");
    let back: Vec<Problem> = serde_json::from_value(json).expect("deserialisable");
    assert_eq!(back, problems);

    for (code, text) in [
        (ProblemCode::InvalidId, "invalid_id"),
        (ProblemCode::NoLines, "no_lines"),
        (ProblemCode::TooManyLines, "too_many_lines"),
        (ProblemCode::DuplicateSku, "duplicate_sku"),
        (ProblemCode::QuantityOutOfRange, "quantity_out_of_range"),
        (ProblemCode::NegativeUnitPrice, "negative_unit_price"),
        (ProblemCode::TotalMismatch, "total_mismatch"),
        (ProblemCode::AmountOverflow, "amount_overflow"),
        (ProblemCode::InvalidCurrency, "invalid_currency"),
        (ProblemCode::MissingPaymentToken, "missing_payment_token"),
    ] {
        assert_eq!(
            serde_json::to_value(code).expect("serialisable"),
            serde_json::Value::from(text)
        );
    }
}
