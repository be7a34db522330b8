//! Grammars of the judge's reply formats, in llguidance's Lark dialect, so a local judge's reply
//! always parses.
//!
//! The analysis of a line may not contain `<`, so the first `<` on a line starts its verdict and
//! every line holds exactly one tag, as the verdict parser reads it; its length is bounded, so
//! every reply ends. The analysis is one regular lexeme: llguidance turns its bounded repetition
//! into one automaton, where llama.cpp's GBNF engine expanded `achar{0,99}` into many parse
//! stacks and checked them at every token.

/// The longest analysis of one verdict line, in characters.
pub const MAX_ANALYSIS_CHARS: usize = 100;

fn shared_rules(max_chars: usize) -> String {
    format!(
        "line: ANALYSIS VERDICT \"\\n\"\nANALYSIS: /[^<>\\n\\r ][^<>\\n\\r]{{0,{}}}/\nVERDICT: \"<YES>\" | \"<NO>\" | \"<NA>\"\n",
        max_chars.saturating_sub(1)
    )
}

fn section(name: &str, tag: &str, count: usize) -> String {
    let mut rule = format!("{name}: \"<{tag}>\\n\"");
    for i in 1..=count {
        rule.push_str(&format!(" \"{i}. \" line"));
    }
    rule.push_str(&format!(" \"</{tag}>\"\n"));
    rule
}

/// The joint format: `safety` numbered lines in the safety section, `behavioral` in the other.
pub fn joint_grammar(safety: usize, behavioral: usize, max_chars: usize) -> String {
    let mut grammar = String::from("start: safety \"\\n\" behavioral\n");
    grammar.push_str(&section("safety", "safety_specifications", safety));
    grammar.push_str(&section("behavioral", "behavioral_specifications", behavioral));
    grammar.push_str(&shared_rules(max_chars));
    grammar
}

/// The sequential format: one line of analysis ending in one verdict.
pub fn sequential_grammar(max_chars: usize) -> String {
    let mut grammar = String::from("start: ANALYSIS VERDICT\n");
    grammar.push_str(&shared_rules(max_chars));
    grammar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joint_grammar_numbers_every_rule() {
        let grammar = joint_grammar(3, 2, 300);
        assert!(grammar.contains(
            "safety: \"<safety_specifications>\\n\" \"1. \" line \"2. \" line \"3. \" line \"</safety_specifications>\""
        ));
        assert!(grammar.contains(
            "behavioral: \"<behavioral_specifications>\\n\" \"1. \" line \"2. \" line \"</behavioral_specifications>\""
        ));
        assert!(grammar.contains("{0,299}"));
    }

    #[test]
    fn sequential_grammar_is_one_verdict() {
        assert!(sequential_grammar(10).starts_with("start: ANALYSIS VERDICT\n"));
    }
}
