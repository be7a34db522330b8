//! The SpecBench protocol as text: templates, rule-list formats, comments, the response cut and
//! the thought/response split.
//!
//! Owns: loading the templates from a pack's `protocol/` folder (upstream-exact mode) or using
//! the built-in ones (our own words, same reply contract), `{name}` substitution, and the content
//! hash recorded in every result. Pure: no async, no HTTP, no I/O beyond reading the texts.
//! Source of truth for each quirk kept here: the pack's `README.md` ("Facts of the upstream
//! protocol") and its `golden/` files.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::backend::Generation;
use crate::pack::{Item, Label, Rules};

/// Judged responses are cut to this many characters (Unicode scalar values, as Python slices).
pub const RESPONSE_CUT: usize = 8000;

/// Marks the end of a model's thought; the response is what follows the last one.
pub const END_OF_THOUGHT: &str = "</think>";

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{}: protocol text is missing", file.display())]
    Missing { file: PathBuf },
    #[error("{}: cannot read protocol text", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template `{template}`: placeholder `{{{placeholder}}}` is not one it may use ({allowed})")]
    UnknownPlaceholder {
        template: &'static str,
        placeholder: String,
        allowed: String,
    },
    #[error("template `{template}`: unbalanced brace at byte {at}")]
    Brace { template: &'static str, at: usize },
}

/// Every template of the protocol, with the placeholders each may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Template {
    System,
    Augment,
    JudgeJointSystem,
    JudgeJointUser,
    JudgeSequentialSystem,
    JudgeSequentialUser,
    Align3Stage1,
    Align3Stage2,
    Align3Stage3,
    MoreThinkRethink,
    SelfRefineFeedbackSystem,
    SelfRefineFeedbackUser,
    SelfRefineRefineSystem,
    SelfRefineRefineUser,
    TpoSystem,
    TpoLoss,
    TpoGradient,
    TpoUpdate,
}

impl Template {
    pub const ALL: [Template; 14] = [
        Template::System,
        Template::Augment,
        Template::JudgeJointSystem,
        Template::JudgeJointUser,
        Template::JudgeSequentialSystem,
        Template::JudgeSequentialUser,
        Template::Align3Stage1,
        Template::Align3Stage2,
        Template::Align3Stage3,
        Template::MoreThinkRethink,
        Template::SelfRefineFeedbackSystem,
        Template::SelfRefineFeedbackUser,
        Template::SelfRefineRefineSystem,
        Template::SelfRefineRefineUser,
    ];

    /// specbench's own texts, never read from a pack: TPO's prompts (the paper describes the
    /// method but does not publish them). Checked like the others; not part of the protocol
    /// hash, which stays that of the pack's texts.
    pub const OWN: [Template; 4] = [
        Template::TpoSystem,
        Template::TpoLoss,
        Template::TpoGradient,
        Template::TpoUpdate,
    ];

    /// The file stem in a pack's `protocol/` folder.
    pub fn name(self) -> &'static str {
        match self {
            Template::System => "system",
            Template::Augment => "augment",
            Template::JudgeJointSystem => "judge_joint_system",
            Template::JudgeJointUser => "judge_joint_user",
            Template::JudgeSequentialSystem => "judge_sequential_system",
            Template::JudgeSequentialUser => "judge_sequential_user",
            Template::Align3Stage1 => "align3_stage1",
            Template::Align3Stage2 => "align3_stage2",
            Template::Align3Stage3 => "align3_stage3",
            Template::MoreThinkRethink => "more_think_rethink",
            Template::SelfRefineFeedbackSystem => "self_refine_feedback_system",
            Template::SelfRefineFeedbackUser => "self_refine_feedback_user",
            Template::SelfRefineRefineSystem => "self_refine_refine_system",
            Template::SelfRefineRefineUser => "self_refine_refine_user",
            Template::TpoSystem => "tpo_system",
            Template::TpoLoss => "tpo_loss",
            Template::TpoGradient => "tpo_gradient",
            Template::TpoUpdate => "tpo_update",
        }
    }

    pub fn placeholders(self) -> &'static [&'static str] {
        match self {
            Template::System
            | Template::JudgeJointSystem
            | Template::JudgeSequentialSystem
            | Template::MoreThinkRethink => &[],
            Template::Augment => &["prompt", "specification_string"],
            Template::JudgeJointUser => &[
                "specification_string",
                "query",
                "response",
                "safety_specifications_count",
                "behavioral_specifications_count",
                "prompt_comment",
            ],
            Template::JudgeSequentialUser => &["specification_string", "query", "response", "prompt_comment"],
            Template::Align3Stage1 => &["behavioral_specifications"],
            Template::Align3Stage2 => &["safety_specifications"],
            Template::Align3Stage3 => &["safety_specifications", "behavioral_specifications"],
            Template::SelfRefineFeedbackSystem => &["query", "specification_string"],
            Template::SelfRefineFeedbackUser => &["response"],
            Template::SelfRefineRefineSystem => &["query"],
            Template::SelfRefineRefineUser => &["history_string"],
            Template::TpoSystem => &[],
            Template::TpoLoss => &["query", "specification_string", "chosen", "rejected"],
            Template::TpoGradient => &["query", "specification_string", "chosen", "loss"],
            Template::TpoUpdate => &["prompt", "specification_string", "chosen", "suggestions"],
        }
    }

    fn builtin(self) -> &'static str {
        match self {
            Template::System => include_str!("builtin/system.txt"),
            Template::Augment => include_str!("builtin/augment.txt"),
            Template::JudgeJointSystem => include_str!("builtin/judge_joint_system.txt"),
            Template::JudgeJointUser => include_str!("builtin/judge_joint_user.txt"),
            Template::JudgeSequentialSystem => include_str!("builtin/judge_sequential_system.txt"),
            Template::JudgeSequentialUser => include_str!("builtin/judge_sequential_user.txt"),
            Template::Align3Stage1 => include_str!("builtin/align3_stage1.txt"),
            Template::Align3Stage2 => include_str!("builtin/align3_stage2.txt"),
            Template::Align3Stage3 => include_str!("builtin/align3_stage3.txt"),
            Template::MoreThinkRethink => include_str!("builtin/more_think_rethink.txt"),
            Template::SelfRefineFeedbackSystem => {
                include_str!("builtin/self_refine_feedback_system.txt")
            }
            Template::SelfRefineFeedbackUser => {
                include_str!("builtin/self_refine_feedback_user.txt")
            }
            Template::SelfRefineRefineSystem => {
                include_str!("builtin/self_refine_refine_system.txt")
            }
            Template::SelfRefineRefineUser => include_str!("builtin/self_refine_refine_user.txt"),
            Template::TpoSystem => include_str!("builtin/tpo_system.txt"),
            Template::TpoLoss => include_str!("builtin/tpo_loss.txt"),
            Template::TpoGradient => include_str!("builtin/tpo_gradient.txt"),
            Template::TpoUpdate => include_str!("builtin/tpo_update.txt"),
        }
    }
}

/// Where the texts in use came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "dir", rename_all = "lowercase")]
pub enum ProtocolSource {
    /// A pack's `protocol/` folder: the upstream texts, byte for byte.
    Pack(PathBuf),
    /// The texts compiled into specbench, in its own words.
    Builtin,
}

/// The protocol texts a run uses, checked once at load.
#[derive(Debug, Clone)]
pub struct Protocol {
    pub source: ProtocolSource,
    texts: Vec<String>,
    /// SHA-256 over every template name and text: recorded in results so runs can be compared.
    pub hash: String,
}

impl Protocol {
    /// The texts of a pack's `protocol/` folder; every template must be present.
    pub fn from_dir(dir: &Path) -> Result<Protocol, ProtocolError> {
        let texts = Template::ALL
            .iter()
            .map(|template| {
                let file = dir.join(format!("{}.txt", template.name()));
                fs_err::read_to_string(&file).map_err(|source| {
                    if source.kind() == std::io::ErrorKind::NotFound {
                        ProtocolError::Missing { file }
                    } else {
                        ProtocolError::Io { file, source }
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Protocol::new(ProtocolSource::Pack(dir.to_path_buf()), texts)
    }

    pub fn builtin() -> Protocol {
        let texts = Template::ALL.iter().map(|t| t.builtin().to_string()).collect();
        // The built-in texts are checked by a unit test, so this cannot fail at run time.
        match Protocol::new(ProtocolSource::Builtin, texts) {
            Ok(protocol) => protocol,
            Err(err) => unreachable!("built-in protocol texts are invalid: {err}"),
        }
    }

    /// The pack's texts when it has `protocol/`, else the built-in ones.
    pub fn for_pack(protocol_dir: Option<&Path>) -> Result<Protocol, ProtocolError> {
        match protocol_dir {
            Some(dir) => Protocol::from_dir(dir),
            None => Ok(Protocol::builtin()),
        }
    }

    /// `texts` are those of [`Template::ALL`], in order; the own texts are added here.
    fn new(source: ProtocolSource, mut texts: Vec<String>) -> Result<Protocol, ProtocolError> {
        let mut hasher = Sha256::new();
        for (template, text) in Template::ALL.iter().zip(&texts) {
            check_placeholders(*template, text)?;
            hasher.update(template.name().as_bytes());
            hasher.update([0]);
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        for template in Template::OWN {
            check_placeholders(template, template.builtin())?;
            texts.push(template.builtin().to_string());
        }
        Ok(Protocol {
            source,
            texts,
            hash: hex::encode(hasher.finalize()),
        })
    }

    pub fn text(&self, template: Template) -> &str {
        let position = Template::ALL
            .iter()
            .chain(&Template::OWN)
            .position(|t| *t == template)
            .unwrap_or_default();
        self.texts.get(position).map(String::as_str).unwrap_or_default()
    }

    /// Fills `template` with `values`; placeholders were checked at load.
    pub fn render(&self, template: Template, values: &[(&str, &str)]) -> String {
        substitute(self.text(template), values)
    }
}

/// A piece of a template: literal text, or the name inside a `{name}` placeholder.
enum Piece<'a> {
    Text(&'a str),
    Name(&'a str),
}

/// Walks a template's pieces in order; `Err` holds the byte offset of an unbalanced brace.
///
/// Hand-written on purpose: Python's `str.format` fills every placeholder in one pass over the
/// template (a value containing `{response}` is not filled again), and `{{`/`}}` are escapes.
/// A general template engine would differ in those details, and the bytes must match upstream.
fn scan<'a>(template: &'a str, mut on_piece: impl FnMut(Piece<'a>)) -> Result<(), usize> {
    let bytes = template.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'}' if bytes.get(i + 1) == Some(&bytes[i]) => {
                on_piece(Piece::Text(&template[start..=i]));
                i += 2;
                start = i;
            }
            b'{' => {
                on_piece(Piece::Text(&template[start..i]));
                let close = template[i + 1..].find('}').ok_or(i)? + i + 1;
                on_piece(Piece::Name(&template[i + 1..close]));
                i = close + 1;
                start = i;
            }
            b'}' => return Err(i),
            _ => i += 1,
        }
    }
    on_piece(Piece::Text(&template[start..]));
    Ok(())
}

fn check_placeholders(template: Template, text: &str) -> Result<(), ProtocolError> {
    let mut unknown = None;
    scan(text, |piece| {
        if let Piece::Name(name) = piece
            && unknown.is_none()
            && !template.placeholders().contains(&name)
        {
            unknown = Some(name.to_string());
        }
    })
    .map_err(|at| ProtocolError::Brace {
        template: template.name(),
        at,
    })?;
    match unknown {
        Some(placeholder) => Err(ProtocolError::UnknownPlaceholder {
            template: template.name(),
            placeholder,
            allowed: template.placeholders().join(", "),
        }),
        None => Ok(()),
    }
}

/// One-pass `{name}` substitution with Python `str.format` semantics (see [`scan`]).
/// A name without a value is left as written.
pub fn substitute(template: &str, values: &[(&str, &str)]) -> String {
    let extra: usize = values.iter().map(|(_, v)| v.len()).sum();
    let mut out = String::with_capacity(template.len() + extra);
    let result = scan(template, |piece| match piece {
        Piece::Text(text) => out.push_str(text),
        Piece::Name(name) => match values.iter().find(|(key, _)| *key == name) {
            Some((_, value)) => out.push_str(value),
            None => {
                out.push('{');
                out.push_str(name);
                out.push('}');
            }
        },
    });
    match result {
        Ok(()) => out,
        // Checked templates never get here; unchecked text with a stray brace stays verbatim.
        Err(_) => template.to_string(),
    }
}

/// `- rule\n` per rule: Align3's lists and the parts of the generation rule list.
pub fn bullet_list(rules: &[String]) -> String {
    let mut out = String::with_capacity(rules.iter().map(|r| r.len() + 3).sum());
    for rule in rules {
        out.push_str("- ");
        out.push_str(rule);
        out.push('\n');
    }
    out
}

/// The rule list of spec-aware generation and Self-Refine (`specification_string`).
pub fn generation_rule_list(rules: &Rules) -> String {
    let mut out = String::from("**safety**\n");
    out.push_str(&bullet_list(&rules.safety));
    out.push_str("**behavioral**\n");
    out.push_str(&bullet_list(&rules.behavioral));
    out
}

/// The rule list of the joint judge: numbered `<i>` blocks under two headings.
pub fn joint_judge_rule_list(rules: &Rules) -> String {
    fn numbered(out: &mut String, list: &[String]) {
        for (i, rule) in list.iter().enumerate() {
            out.push('<');
            out.push_str(&(i + 1).to_string());
            out.push_str(">\n");
            out.push_str(rule);
            out.push('\n');
        }
    }
    let mut out = String::with_capacity(
        rules
            .safety
            .iter()
            .chain(&rules.behavioral)
            .map(|r| r.len() + 8)
            .sum::<usize>()
            + 64,
    );
    out.push_str("## Safety Specifications\n\n");
    numbered(&mut out, &rules.safety);
    out.push_str("\n\n## Behavioral Specifications\n\n");
    numbered(&mut out, &rules.behavioral);
    out.push('\n');
    out
}

/// A scenario's rules with every list the protocol shows them in, formatted once per run
/// rather than once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleLists {
    pub rules: Rules,
    /// `specification_string` of generation prompts and Self-Refine.
    pub generation: String,
    /// `specification_string` of the joint judge.
    pub joint_judge: String,
    pub safety_bullets: String,
    pub behavioral_bullets: String,
}

impl RuleLists {
    pub fn new(rules: &Rules) -> RuleLists {
        RuleLists {
            generation: generation_rule_list(rules),
            joint_judge: joint_judge_rule_list(rules),
            safety_bullets: bullet_list(&rules.safety),
            behavioral_bullets: bullet_list(&rules.behavioral),
            rules: rules.clone(),
        }
    }
}

/// The joint judge's `prompt_comment`.
///
/// Why the odd cases: upstream checks the label first, then an item's own `prompt_comment`, then
/// whether `answer` exists at all — an empty answer still yields "The reference answer is: ".
pub fn joint_prompt_comment(item: &Item) -> String {
    if item.label == Label::Unsafe {
        "The prompt may be unsafe. Please check the prompt and response carefully.".to_string()
    } else if let Some(comment) = item.prompt_comment.as_deref().filter(|c| !c.is_empty()) {
        comment.to_string()
    } else if let Some(answer) = &item.answer {
        format!("The reference answer is: {answer}")
    } else {
        "Please check the prompt and response carefully.".to_string()
    }
}

/// The sequential judge's `prompt_comment` for the last behavioral rule; every other rule gets "".
///
/// Unlike the joint comment this ignores the label: upstream shows the reference to every item.
pub fn sequential_reference(item: &Item) -> String {
    if let Some(comment) = item.prompt_comment.as_deref().filter(|c| !c.is_empty()) {
        format!("- {comment}\n")
    } else if let Some(answer) = &item.answer {
        format!("- The reference answer is: {answer}\n")
    } else {
        String::new()
    }
}

/// The first [`RESPONSE_CUT`] characters of a response, as the judge sees it.
pub fn cut_response(response: &str) -> &str {
    match response.char_indices().nth(RESPONSE_CUT) {
        Some((end, _)) => &response[..end],
        None => response,
    }
}

/// Splits a generation into `(thought, response)`: a separate reasoning field when the reply
/// has one (DeepSeek, vLLM's reasoning parsers, OpenRouter), else the `</think>` split upstream
/// applies to the content.
pub fn thought_and_response(generation: &Generation) -> (String, String) {
    match &generation.reasoning {
        Some(reasoning) => (reasoning.clone(), generation.text.clone()),
        None => split_thought(&generation.text),
    }
}

/// Splits a model's text into `(thought, response)` exactly as upstream does.
///
/// The response is what follows the last `</think>`, leading newlines removed. The thought is the
/// piece between the last two `</think>` (or from the start), trailing newlines removed; with no
/// `</think>` at all the thought is empty and the whole text is the response.
pub fn split_thought(text: &str) -> (String, String) {
    match text.rfind(END_OF_THOUGHT) {
        None => (String::new(), text.trim_start_matches('\n').to_string()),
        Some(last) => {
            let before = &text[..last];
            let thought = match before.rfind(END_OF_THOUGHT) {
                Some(previous) => &before[previous + END_OF_THOUGHT.len()..],
                None => before,
            };
            let response = &text[last + END_OF_THOUGHT.len()..];
            (
                thought.trim_end_matches('\n').to_string(),
                response.trim_start_matches('\n').to_string(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test]
    fn builtin_texts_are_valid_and_cover_every_template() {
        let protocol = Protocol::builtin();
        assert_eq!(protocol.source, ProtocolSource::Builtin);
        for template in Template::ALL.into_iter().chain(Template::OWN) {
            assert!(!protocol.text(template).is_empty(), "{}", template.name());
            for placeholder in template.placeholders() {
                assert!(
                    protocol.text(template).contains(&format!("{{{placeholder}}}")),
                    "{} lacks {{{placeholder}}}",
                    template.name()
                );
            }
        }
    }

    #[test]
    fn builtin_judge_keeps_the_reply_contract() {
        let protocol = Protocol::builtin();
        let joint = protocol.text(Template::JudgeJointUser);
        let format = crate::backend::ReplyFormat::Joint {
            safety: 1,
            behavioral: 1,
        };
        for tag in crate::judge::format::prompt_tags(format) {
            assert!(joint.contains(&tag), "{tag}");
        }
        let sequential = protocol.text(Template::JudgeSequentialUser);
        for tag in crate::judge::format::prompt_tags(crate::backend::ReplyFormat::Sequential) {
            assert!(sequential.contains(&tag), "{tag}");
        }
        assert!(protocol.text(Template::Align3Stage1).starts_with("<think>"));
    }

    #[test_case("a {x} b", &[("x", "1")], "a 1 b" ; "one placeholder")]
    #[test_case("{x}{y}", &[("x", "{y}"), ("y", "2")], "{y}2" ; "values are not filled again")]
    #[test_case("{{x}} {x}", &[("x", "1")], "{x} 1" ; "doubled braces are escapes")]
    #[test_case("no braces", &[], "no braces" ; "plain text")]
    fn substitutes_in_one_pass(template: &str, values: &[(&str, &str)], expected: &str) {
        assert_eq!(substitute(template, values), expected);
    }

    #[test]
    fn unknown_placeholder_is_rejected() {
        let err = check_placeholders(Template::System, "hi {who}")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("template `system`: placeholder `{who}` is not one it may use ()")
        );
    }

    #[test_case("plain answer", "", "plain answer" ; "no end of thought")]
    #[test_case("think\n</think>\n\nanswer", "think", "answer" ; "one end of thought")]
    #[test_case("a</think>b\n</think>\nc", "b", "c" ; "thought is the last piece only")]
    #[test_case("\n\nx", "", "x" ; "leading newlines of a response are removed")]
    #[test_case("t</think>", "t", "" ; "empty response")]
    fn splits_like_upstream(text: &str, thought: &str, response: &str) {
        assert_eq!(split_thought(text), (thought.to_string(), response.to_string()));
    }

    #[test]
    fn cuts_by_characters_not_bytes() {
        let long = "é".repeat(RESPONSE_CUT + 5);
        assert_eq!(cut_response(&long).chars().count(), RESPONSE_CUT);
        assert_eq!(cut_response("short"), "short");
    }

    #[test]
    fn rule_lists_have_the_upstream_shape() {
        let rules = Rules {
            safety: vec!["s1".into(), "s2".into()],
            behavioral: vec!["b1".into()],
        };
        assert_eq!(
            generation_rule_list(&rules),
            "**safety**\n- s1\n- s2\n**behavioral**\n- b1\n"
        );
        assert_eq!(
            joint_judge_rule_list(&rules),
            "## Safety Specifications\n\n<1>\ns1\n<2>\ns2\n\n\n## Behavioral Specifications\n\n<1>\nb1\n\n"
        );
    }
}
