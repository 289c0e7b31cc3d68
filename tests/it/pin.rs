//! The `pin` column: each pin row's attachment pinned to its contact exactly once (after lost
//! answers and kills too), nothing sent again by a rerun, a pin added to a done manifest made by
//! a rerun, a pin refused for good reported as the row's pin (its attachment kept), and `check`
//! naming a bad value with its line.

use crate::common::{ID, Scratch, bin, check_json, problems};

#[test]
fn check_reports_a_bad_pin_value_with_its_line_and_the_value() {
    let s = Scratch::new();
    s.file("a.pdf", "a");
    let manifest = s.manifest(format!(
        "file,contact_id,reference_id,pin\n\
         a.pdf,{ID},{ID},TRUE\n\
         a.pdf,{ID},{ID}0,no\n\
         a.pdf,{ID},{ID}1,maybe\n\
         a.pdf,{ID},{ID}2,\n"
    ));
    let (code, doc) = check_json(&manifest, &["--offline"]);
    assert_eq!(code, 2, "{doc:#}");
    let pin_problems: Vec<_> = problems(&doc)
        .into_iter()
        .filter(|(_, _, kind)| kind != "id_format")
        .collect();
    assert_eq!(
        pin_problems,
        [(Some(4), Some("pin".to_string()), "invalid_pin".to_string())]
    );
    let text = bin()
        .args(["check", "--offline"])
        .arg(&manifest)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("error: line 4, column pin: \"maybe\" is not a pin value"),
        "{text}"
    );
}
