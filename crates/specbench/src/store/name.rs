//! The one check of every name that becomes a path component under a results folder: model
//! folders, scenario folders, method folders and judge file stems.
//!
//! Why one place: a name like `..`, `org/` or `a/b` given to `--model` would otherwise write
//! outside the results folder or into its root. Only the component is checked, never the name
//! a server receives: `--model org/model` still sends `org/model` and writes to `model/`.

/// A name that cannot be a path component; nothing is written when it is found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} `{}`: not usable as a result {kind} name: {problem}", value.escape_debug())]
pub struct NameError {
    /// The flag or field the name came from (`--model`, `judges.<stem>.model.key`).
    pub field: String,
    /// The name as given, escaped when shown so that the error stays one line.
    pub value: String,
    pub kind: &'static str,
    pub problem: String,
}

/// Checks `component`, the path component derived from `value` (the same text, or the part of a
/// model key after its last `/`). `kind` is `folder` or `file`, for the message.
pub fn check_component(field: &str, value: &str, component: &str, kind: &'static str) -> Result<(), NameError> {
    let problem = if component.is_empty() {
        if value.is_empty() {
            Some("it is empty".to_string())
        } else {
            Some("the part after the last `/` is empty".to_string())
        }
    } else if component == "." || component == ".." {
        Some(format!("`{component}` is not a {kind} of its own"))
    } else if kind == "folder" && component.starts_with('.') {
        // Readers skip hidden folders (`.journal`): results there would be invisible.
        Some("a folder name starting with `.` is hidden from report and view".to_string())
    } else if component.contains(['/', '\\']) {
        Some("it holds a path separator (`/` or `\\`)".to_string())
    } else if component.chars().any(char::is_control) {
        Some("it holds a control character".to_string())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(NameError {
            field: field.to_string(),
            value: value.to_string(),
            kind,
            problem,
        }),
    }
}

/// Checks a model key: its folder is the part after the last `/` (upstream's layout).
pub fn check_model_key(field: &str, key: &str) -> Result<(), NameError> {
    check_component(field, key, super::short_name(key), "folder")
}

/// Checks a name used whole as one folder (scenario, method).
pub fn check_folder(field: &str, name: &str) -> Result<(), NameError> {
    check_component(field, name, name, "folder")
}

/// Checks a judge's file stem (`<stem>_evaluate.json`, `.journal/<stem>.jsonl`).
pub fn check_file_stem(field: &str, stem: &str) -> Result<(), NameError> {
    check_component(field, stem, stem, "file")
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("Qwen3-32B" ; "plain")]
    #[test_case("gpt-4.1" ; "dots inside")]
    #[test_case("Qwen/Qwen3-14B" ; "an organisation")]
    #[test_case("model@v2:latest" ; "at and colon")]
    fn keeps_legitimate_model_keys(key: &str) {
        assert_eq!(check_model_key("--model", key), Ok(()));
    }

    #[test_case("", "it is empty" ; "empty")]
    #[test_case(".", "`.` is not a folder of its own" ; "dot")]
    #[test_case("..", "`..` is not a folder of its own" ; "dot dot")]
    #[test_case("org/", "the part after the last `/` is empty" ; "trailing slash")]
    #[test_case("a/..", "`..` is not a folder of its own" ; "dot dot after a slash")]
    #[test_case(".hidden", "a folder name starting with `.` is hidden from report and view" ; "a leading dot")]
    #[test_case("a\\b", "it holds a path separator (`/` or `\\`)" ; "backslash")]
    #[test_case("a\u{0}b", "it holds a control character" ; "nul")]
    #[test_case("a\nb", "it holds a control character" ; "newline")]
    fn refuses_names_that_leave_the_folder(key: &str, problem: &str) {
        let error = check_model_key("--model", key).err();
        assert_eq!(error.map(|e| e.problem), Some(problem.to_string()), "{key:?}");
    }

    #[test]
    fn the_message_is_one_line_naming_flag_and_value() {
        let error = check_model_key("--model", "a\nb").err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("--model `a\\nb`: not usable as a result folder name: it holds a control character")
        );
    }
}
