//! Prompt files, the built-in sets and the benchmark registry.

use std::path::{Path, PathBuf};

use steerkit_data::sets::{builtin, read_file, resolve, ReadOptions, SetSpec, BUILTIN};
use steerkit_data::{DataError, SetKind};

/// `bytes` written to `name` in the test's scratch folder `d`.
fn tmp(d: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let p = d.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// One of the project's validation-only files in `sets/`.
fn validation_file(name: &str) -> Vec<steerkit_data::PromptItem> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("sets")
        .join(name);
    read_file(&p, &ReadOptions::default()).unwrap()
}

/// The project's contrast pairs (`sets/contrast.jsonl`, validation only).
fn contrast_pairs() -> Vec<steerkit_data::PromptItem> {
    validation_file("contrast.jsonl")
}

fn shared(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/datasets")
        .join(name)
}

#[test]
fn reads_txt_jsonl_and_csv() {
    let d = tempfile::tempdir().unwrap();
    let o = ReadOptions::default();
    let t = read_file(&tmp(&d, "a.txt", b"first\r\n\nsecond\n"), &o).unwrap();
    assert_eq!(
        t.iter().map(|i| i.prompt.as_str()).collect::<Vec<_>>(),
        ["first", "second"]
    );
    let j = read_file(
        &tmp(
            &d,
            "a.jsonl",
            b"{\"q\": \"one\", \"type\": \"x\"}\n{\"q\": \"two\"}\n",
        ),
        &ReadOptions {
            field: Some("q".into()),
            ..o.clone()
        },
    )
    .unwrap();
    assert_eq!(j[0].prompt, "one");
    assert_eq!(j[0].category.as_deref(), Some("x"));
    let c = read_file(
        &tmp(
            &d,
            "a.csv",
            b"id,prompt,label\n1,\"hello, world\",safe\n2,bye,unsafe\n",
        ),
        &o,
    )
    .unwrap();
    assert_eq!(c[0].prompt, "hello, world");
    assert_eq!(c[1].label.as_deref(), Some("unsafe"));
}

#[test]
fn limit_and_seeded_shuffle() {
    let d = tempfile::tempdir().unwrap();
    let p = tmp(
        &d,
        "n.txt",
        (0..50)
            .map(|i| format!("p{i}\n"))
            .collect::<String>()
            .as_bytes(),
    );
    let a = read_file(
        &p,
        &ReadOptions {
            limit: Some(5),
            shuffle_seed: Some(3),
            field: None,
        },
    )
    .unwrap();
    let b = read_file(
        &p,
        &ReadOptions {
            limit: Some(5),
            shuffle_seed: Some(3),
            field: None,
        },
    )
    .unwrap();
    let c = read_file(
        &p,
        &ReadOptions {
            limit: Some(5),
            shuffle_seed: None,
            field: None,
        },
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.len(), 5);
    assert_ne!(a, c);
    assert_eq!(c[4].prompt, "p4");
}

fn err(path: &Path, o: &ReadOptions) -> String {
    read_file(path, o).unwrap_err().to_string()
}

#[test]
fn bad_files_name_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let o = ReadOptions::default();
    let e = err(&tmp(&d, "empty.txt", b"\n \n"), &o);
    assert!(e.contains("empty.txt") && e.contains("no prompts"), "{e}");
    let e = err(
        &tmp(
            &d,
            "nofield.jsonl",
            b"{\"prompt\": \"ok\"}\n{\"text\": \"x\"}\n",
        ),
        &o,
    );
    assert!(
        e.contains("nofield.jsonl:2") && e.contains("no field `prompt`"),
        "{e}"
    );
    let e = err(&tmp(&d, "bad.txt", b"fine\n\xff\xfe broken\n"), &o);
    assert!(e.contains("bad.txt:2") && e.contains("UTF-8"), "{e}");
    let e = err(
        &tmp(&d, "bad.jsonl", b"{\"prompt\": \"ok\"}\n{not json\n"),
        &o,
    );
    assert!(
        e.contains("bad.jsonl:2") && e.contains("invalid JSON"),
        "{e}"
    );
    let e = err(&tmp(&d, "nocol.csv", b"a,b\n1,2\n"), &o);
    assert!(e.contains("no column `prompt`"), "{e}");
    assert!(matches!(
        read_file(Path::new("/no/such.txt"), &o),
        Err(DataError::File { .. })
    ));
}

#[test]
fn builtin_sets_are_complete_and_unknown_names_are_errors() {
    for (name, kind, _) in BUILTIN {
        let s = builtin(name).unwrap();
        let size = if name.starts_with("pairs_") {
            80..=100
        } else {
            150..=200
        };
        assert!(size.contains(&s.items.len()), "{name}: {}", s.items.len());
        assert_eq!(s.kind, kind);
    }
    let p = builtin("pseudo_harmful").unwrap();
    let mut types: Vec<&str> = p
        .items
        .iter()
        .filter_map(|i| i.category.as_deref())
        .collect();
    types.sort();
    types.dedup();
    assert_eq!(types.len(), 10, "{types:?}");
    let e = builtin("nope").unwrap_err().to_string();
    assert!(
        e.contains("unknown set `nope`") && e.contains("pseudo_harmful"),
        "{e}"
    );
    assert!(builtin("harmful.test").is_err());
}

/// `NAME.train` and `NAME.val` split a built-in set two to one, disjoint and complete, the
/// same way every time, and keep its kind (also through a spec).
#[test]
fn builtin_splits_are_disjoint_and_complete() {
    for (name, kind, _) in BUILTIN {
        let all = builtin(name).unwrap();
        let train = builtin(&format!("{name}.train")).unwrap();
        let val = builtin(&format!("{name}.val")).unwrap();
        assert_eq!(train.items.len() + val.items.len(), all.items.len());
        assert_eq!(val.items.len(), all.items.len() / 3, "{name}");
        assert_eq!(val.items[0].prompt, all.items[2].prompt);
        assert_eq!(train.items[2].prompt, all.items[3].prompt);
        let seen: std::collections::HashSet<&str> =
            train.items.iter().map(|i| i.prompt.as_str()).collect();
        assert!(val.items.iter().all(|i| !seen.contains(i.prompt.as_str())));
        assert_eq!((train.kind, val.kind), (kind, kind));
        let spec: SetSpec = format!("{name}.val").parse().unwrap();
        let r = resolve(&spec, &ReadOptions::default()).unwrap();
        assert_eq!(r[0].items.len(), val.items.len());
        assert_eq!(r[0].name, format!("{name}.val"));
    }
}

/// The built-in sets must not copy any prompt of the evaluation or training sets.
#[test]
fn builtin_sets_copy_no_benchmark_prompt() {
    let norm = |s: &str| {
        s.to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || c.is_whitespace())
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let dir = shared("");
    let mut bench = std::collections::HashSet::new();
    for f in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "jsonl") {
            for it in read_file(&p, &ReadOptions::default()).unwrap() {
                bench.insert(norm(&it.prompt));
            }
        }
    }
    assert!(bench.len() > 3000, "{} benchmark prompts read", bench.len());
    let contrast = contrast_pairs();
    assert_eq!(contrast.len(), 64);
    let borderline = validation_file("borderline_unsafe.jsonl");
    assert_eq!(borderline.len(), 60);
    let fresh = validation_file("fresh_twins.jsonl");
    assert_eq!(fresh.len(), 320);
    let own = BUILTIN
        .iter()
        .flat_map(|(name, _, _)| builtin(name).unwrap().items)
        .chain(contrast)
        .chain(borderline)
        .chain(fresh);
    for it in own {
        assert!(
            !bench.contains(&norm(&it.prompt)),
            "`{}` is a benchmark prompt",
            it.prompt
        );
    }
}

/// The (safe, unsafe) pairs of a validation file whose every safe prompt is followed by its
/// unsafe twin; fails unless the labels alternate so.
fn alternating_twins(
    items: &[steerkit_data::PromptItem],
) -> Vec<(&steerkit_data::PromptItem, &steerkit_data::PromptItem)> {
    assert_eq!(items.len() % 2, 0, "an unpaired prompt");
    items
        .chunks(2)
        .map(|pair| {
            assert_eq!(pair[0].label.as_deref(), Some("safe"), "{}", pair[0].prompt);
            assert_eq!(
                pair[1].label.as_deref(),
                Some("unsafe"),
                "{}",
                pair[1].prompt
            );
            (&pair[0], &pair[1])
        })
        .collect()
}

/// The project's contrast pairs: every safe prompt followed by its unsafe twin.
#[test]
fn contrast_pairs_alternate_safe_and_unsafe() {
    for (safe, unsafe_) in alternating_twins(&contrast_pairs()) {
        let t = safe.category.as_deref().unwrap();
        assert_eq!(
            unsafe_.category.as_deref(),
            Some(format!("contrast_{t}").as_str())
        );
    }
}

/// `sets/fresh_twins.jsonl` (validation only): every safe prompt followed by its unsafe twin of
/// the same kind.
#[test]
fn fresh_twins_alternate_safe_and_unsafe() {
    for (safe, unsafe_) in alternating_twins(&validation_file("fresh_twins.jsonl")) {
        assert_eq!(safe.category, unsafe_.category, "{}", safe.prompt);
        assert_ne!(safe.prompt, unsafe_.prompt);
    }
}

/// `pairs_safe` and `pairs_unsafe` are twins line by line (same category, distinct prompts), so
/// their `.train` and `.val` splits hold whole pairs.
#[test]
fn pair_sets_are_twins_line_by_line() {
    for split in ["", ".train", ".val"] {
        let safe = builtin(&format!("pairs_safe{split}")).unwrap();
        let unsafe_ = builtin(&format!("pairs_unsafe{split}")).unwrap();
        assert_eq!(safe.items.len(), unsafe_.items.len(), "{split}");
        for (s, u) in safe.items.iter().zip(&unsafe_.items) {
            assert!(
                s.category.is_some() && s.category == u.category,
                "{}",
                s.prompt
            );
            assert_ne!(s.prompt, u.prompt);
        }
    }
    assert_eq!(
        (SetKind::Safe, SetKind::Harmful),
        (
            builtin("pairs_safe").unwrap().kind,
            builtin("pairs_unsafe").unwrap().kind
        )
    );
}

#[test]
fn xstest_splits_itself_and_the_registry_knows_kinds() {
    let spec: SetSpec = format!("xstest={}", shared("xstest.jsonl").display())
        .parse()
        .unwrap();
    let sets = resolve(&spec, &ReadOptions::default()).unwrap();
    assert_eq!(sets.len(), 2);
    assert_eq!(
        (sets[0].name.as_str(), sets[0].kind, sets[0].items.len()),
        ("xstest:safe", SetKind::Safe, 250)
    );
    assert_eq!(
        (sets[1].name.as_str(), sets[1].kind, sets[1].items.len()),
        ("xstest:unsafe", SetKind::Harmful, 200)
    );
    let spec: SetSpec = format!("hb={}", shared("harmbench_test.jsonl").display())
        .parse()
        .unwrap();
    assert_eq!(
        resolve(&spec, &ReadOptions::default()).unwrap()[0].kind,
        SetKind::Harmful
    );
    let spec: SetSpec = format!("mine:safe={}", shared("harmbench_test.jsonl").display())
        .parse()
        .unwrap();
    assert_eq!(
        resolve(&spec, &ReadOptions::default()).unwrap()[0].kind,
        SetKind::Safe
    );
    assert!("x:maybe=f.txt".parse::<SetSpec>().is_err());
    assert!("bad name=f.txt".parse::<SetSpec>().is_err());
}

/// A byte-order mark at the start of a prompt file (some editors write one) is not part of
/// the first prompt, in text and JSON Lines files alike; a JSON array says that JSON Lines
/// are expected.
#[test]
fn byte_order_marks_and_json_arrays() {
    let d = tempfile::tempdir().unwrap();
    let txt = d.path().join("p.txt");
    std::fs::write(&txt, b"\xef\xbb\xbfHi\nThere\n").unwrap();
    let items = read_file(&txt, &Default::default()).unwrap();
    assert_eq!(items[0].prompt, "Hi");
    let jsonl = d.path().join("p.jsonl");
    std::fs::write(&jsonl, b"\xef\xbb\xbf{\"prompt\": \"Hi\"}\n").unwrap();
    assert_eq!(
        read_file(&jsonl, &Default::default()).unwrap()[0].prompt,
        "Hi"
    );
    let json = d.path().join("p.json");
    for text in ["[{\"prompt\": \"Hi\"}]\n", "[\n  {\"prompt\": \"Hi\"}\n]\n"] {
        std::fs::write(&json, text).unwrap();
        let e = read_file(&json, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a JSON array; prompt files are JSON Lines"),
            "{e}"
        );
    }
}
