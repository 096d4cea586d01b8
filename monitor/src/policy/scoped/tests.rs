use super::*;

fn pattern(text: &str) -> LabelPattern {
    LabelPattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn rule(targets: &[&str], mnemonics: &[&str], scope: Option<&str>) -> ScopedRuleConfig {
    ScopedRuleConfig {
        targets: targets.iter().map(|s| s.to_string()).collect(),
        mnemonics: mnemonics.iter().map(|s| s.to_string()).collect(),
        scope: scope.map(str::to_string),
        allow: vec![NetRule {
            cidr: "127.0.0.1/32".parse().unwrap(),
            port: Some(8080),
        }],
    }
}

fn ip() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn spawn(label: Option<&'static str>, mnemonic: Option<&'static str>) -> Who<'static> {
    Who {
        label,
        mnemonic,
        spawn: true,
        ..Who::default()
    }
}

#[test]
fn exact_package_and_recursive_patterns_match_their_labels() {
    let exact = pattern("//third_party/npm:fetch");
    assert!(exact.matches("//third_party/npm:fetch"));
    assert!(
        exact.matches("@//third_party/npm:fetch"),
        "main repo spelt @//"
    );
    assert!(!exact.matches("//third_party/npm:fetch2"));
    assert!(!exact.matches("//third_party:fetch"));
    assert!(!exact.matches("@other//third_party/npm:fetch"));

    let short = pattern("//tools/fetch");
    assert!(short.matches("//tools/fetch:fetch"), "//pkg = //pkg:pkg");
    assert!(!short.matches("//tools/fetch:other"));

    for text in ["//tools/fetch:*", "//tools/fetch:all"] {
        let p = pattern(text);
        assert!(p.matches("//tools/fetch:a"), "{text}");
        assert!(p.matches("//tools/fetch:b"), "{text}");
        assert!(!p.matches("//tools/fetch/sub:a"), "{text}: not below");
        assert!(!p.matches("//tools:fetch"), "{text}");
    }

    let rec = pattern("//third_party/...");
    assert!(rec.matches("//third_party:x"));
    assert!(rec.matches("//third_party/a/b:c"));
    assert!(
        !rec.matches("//third_party_not:x"),
        "a segment, not a prefix"
    );
    assert!(!rec.matches("//src:x"));
    let all = pattern("//...");
    assert!(all.matches("//:net_requires"));
    assert!(all.matches("//a/b:c"));
    assert!(!all.matches("@ext//a:b"));
    assert!(!all.matches("@bazel"));
    assert!(pattern("@ext//...:all").matches("@ext//x:y"));
    assert!(pattern("//:net_requires").matches("//:net_requires"));
}

#[test]
fn malformed_patterns_are_refused_with_a_reason() {
    for (text, why) in [
        ("third_party/...", "start it with //"),
        ("@bazel", "scope = \"@bazel\""),
        ("//a//b:c", "empty path segment"),
        ("//a/../b:c", ". or .. segment"),
        ("//a:", "invalid target name"),
        ("//a:b*", "invalid target name"),
        ("//a*:b", "character '*'"),
        ("//", "invalid target name"),
        ("//a/:b", "empty path segment"),
    ] {
        let e = LabelPattern::parse(text).expect_err(text);
        assert!(e.contains(why), "{text}: {e}");
    }
}

#[test]
fn entries_need_one_kind_of_scope_and_destinations() {
    assert!(validate(&rule(&["//a:b"], &[], None)).is_ok());
    assert!(validate(&rule(&[], &["Genrule"], None)).is_ok());
    assert!(validate(&rule(&[], &[], Some("@bazel"))).is_ok());
    let e = validate(&rule(&[], &[], None)).unwrap_err();
    assert_eq!(e.0, "");
    assert!(e.1.contains("needs a scope"), "{e:?}");
    let e = validate(&rule(&["//a:b"], &[], Some("@bazel"))).unwrap_err();
    assert_eq!(e.0, "scope");
    let e = validate(&rule(&[], &[], Some("@server"))).unwrap_err();
    assert!(e.1.contains("unknown scope \"@server\""), "{e:?}");
    let e = validate(&rule(&["//a:b", "a:b"], &[], None)).unwrap_err();
    assert_eq!(e.0, "targets[1]");
    let e = validate(&rule(&[], &["Gen rule"], None)).unwrap_err();
    assert_eq!(e.0, "mnemonics[0]");
    let mut empty = rule(&["//a:b"], &[], None);
    empty.allow.clear();
    assert_eq!(validate(&empty).unwrap_err().0, "allow");
}

#[test]
fn a_target_rule_allows_its_label_only() {
    let rules = ScopedRules::new(&[rule(&["//net:*"], &[], None)]).unwrap();
    let v = |who: &Who| rules.verdict(who, ip(), 8080);
    assert_eq!(v(&spawn(Some("//net:fetch"), None)), ScopedVerdict::Allowed);
    assert_eq!(v(&spawn(Some("//src:cc"), None)), ScopedVerdict::Denied);
    assert_eq!(v(&spawn(None, None)), ScopedVerdict::Undecided);
    assert_eq!(
        rules.verdict(&spawn(Some("//net:fetch"), None), ip(), 8081),
        ScopedVerdict::Denied,
        "another port"
    );
    let never_labelled = Who {
        spawn: false,
        ..spawn(None, None)
    };
    assert_eq!(v(&never_labelled), ScopedVerdict::Denied);
    let server = Who {
        job: true,
        bazel: true,
        ..Who::default()
    };
    assert_eq!(v(&server), ScopedVerdict::Denied, "the server is no target");
}

#[test]
fn targets_and_mnemonics_together_both_must_match() {
    let rules = ScopedRules::new(&[rule(&["//net/..."], &["Genrule"], None)]).unwrap();
    let v = |who: &Who| rules.verdict(who, ip(), 8080);
    assert_eq!(
        v(&spawn(Some("//net:a"), Some("Genrule"))),
        ScopedVerdict::Allowed
    );
    assert_eq!(
        v(&spawn(Some("//net:a"), Some("CppCompile"))),
        ScopedVerdict::Denied
    );
    assert_eq!(v(&spawn(Some("//net:a"), None)), ScopedVerdict::Undecided);
    assert_eq!(v(&spawn(None, Some("Genrule"))), ScopedVerdict::Undecided);
    assert_eq!(v(&spawn(None, Some("Javac"))), ScopedVerdict::Denied);
}

#[test]
fn the_bazel_tier_is_the_job_of_a_bazel_build_only() {
    let rules = ScopedRules::new(&[rule(&[], &[], Some("@bazel"))]).unwrap();
    let server = Who {
        label: Some("@bazel"),
        job: true,
        bazel: true,
        ..Who::default()
    };
    assert_eq!(rules.verdict(&server, ip(), 8080), ScopedVerdict::Allowed);
    let command = Who {
        job: true,
        ..Who::default()
    };
    assert_eq!(rules.verdict(&command, ip(), 8080), ScopedVerdict::Denied);
    assert_eq!(
        rules.verdict(&spawn(None, None), ip(), 8080),
        ScopedVerdict::Denied,
        "a spawn is never the server, labelled or not"
    );
    assert!(!rules.is_empty());
    assert!(ScopedRules::default().is_empty());
}

#[test]
fn a_declared_label_and_mnemonic_are_granted_the_rules_they_match() {
    let rules = ScopedRules::new(&[
        rule(&["//granted/..."], &[], None),
        rule(&[], &["Javac"], None),
        rule(&["//granted/..."], &["Genrule"], None),
        rule(&[], &[], Some(BAZEL_SCOPE)),
    ])
    .unwrap();
    assert_eq!(
        rules
            .granted_to(Some("//granted/a:b"), Some("Genrule"))
            .len(),
        2
    );
    assert_eq!(
        rules.granted_to(Some("//granted/a:b"), Some("Javac")).len(),
        2
    );
    assert_eq!(rules.granted_to(Some("//other:b"), Some("Javac")).len(), 1);
    // Unknown label: a targets rule cannot be granted in advance; the
    // `@bazel` tier is never an action's.
    assert!(rules.granted_to(None, Some("Genrule")).is_empty());
}
