//! Hugging Face chat templates, rendered as `transformers` renders them.
//!
//! Used wherever a prompt is built locally instead of by the server: the completions-style
//! prefill over HTTP, and the in-process local model. The environment mirrors the one
//! `transformers` compiles templates with (`trim_blocks`, `lstrip_blocks`, loop controls,
//! `raise_exception`, `strftime_now`, a `tojson` that is `json.dumps`), Python's string methods
//! come from minijinja-contrib's pycompat, and values print as Python prints them (`True`,
//! `None`, `[1, 'two']`). `continue_final_message` cuts the text the way `transformers` does:
//! a marker is appended to the final message, and the render is cut at its last occurrence.
//! Checked against renders by the real library: `tests/fixtures/chat_templates/`.
//! Not supported: the `{% generation %}` tag (no SpecBench template uses it).

use std::fmt::Write as _;

use minijinja::value::{Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde_json::Map;

use super::Message;

/// What `transformers` appends to the final message to find where it ends.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template does not compile: {0}")]
    Compile(String),
    #[error("chat template failed: {0}")]
    Render(String),
    #[error("add_generation_prompt and continue_final_message cannot both be set")]
    BothFlags,
    #[error("continue_final_message is set but the template does not show the final message verbatim")]
    FinalMessageNotFound,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError::Compile(describe(&e)))?;
        Ok(ChatTemplate { env })
    }

    /// Renders `messages`. `variables` are the tokenizer's special tokens (`bos_token`, ...)
    /// then `chat_template_kwargs`; later keys win, as in `transformers`.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        continue_final_message: bool,
        variables: &Map<String, serde_json::Value>,
    ) -> Result<String, TemplateError> {
        if add_generation_prompt && continue_final_message {
            return Err(TemplateError::BothFlags);
        }
        let final_content = messages.last().map(|m| m.content.clone()).unwrap_or_default();
        let mut shown: Vec<Message> = messages.to_vec();
        if continue_final_message && let Some(last) = shown.last_mut() {
            last.content.push_str(CONTINUE_TAG);
        }
        let mut context = Map::new();
        context.insert("messages".into(), serde_json::to_value(&shown).unwrap_or_default());
        context.insert("tools".into(), serde_json::Value::Null);
        context.insert("documents".into(), serde_json::Value::Null);
        context.insert("add_generation_prompt".into(), add_generation_prompt.into());
        for (key, value) in variables {
            context.insert(key.clone(), value.clone());
        }
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        let rendered = template
            .render(Value::from_serialize(&context))
            .map_err(|e| TemplateError::Render(describe(&e)))?;
        if !continue_final_message {
            return Ok(rendered);
        }
        let tag = CONTINUE_TAG.trim();
        if !rendered.contains(final_content.trim()) || !rendered.contains(tag) {
            return Err(TemplateError::FinalMessageNotFound);
        }
        let at = rendered.rfind(tag).unwrap_or(rendered.len());
        if rendered[at..].starts_with(CONTINUE_TAG) {
            Ok(rendered[..at].to_string())
        } else {
            // The template trimmed the marker's trailing space: so it trims, and so do we.
            Ok(rendered[..at].trim_end().to_string())
        }
    }
}

fn describe(error: &Error) -> String {
    match error.detail() {
        Some(detail) => format!("{detail} (line {})", error.line().unwrap_or(0)),
        None => error.to_string(),
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn strftime_now(format: String) -> Result<Value, Error> {
    let now = jiff::Zoned::now();
    Ok(Value::from(now.strftime(&format).to_string()))
}

/// `{{ value }}` as Python prints it: `True`, `None`, `2.0`, `['a', 1]`; undefined is empty.
fn python_formatter(out: &mut minijinja::Output, _state: &State, value: &Value) -> Result<(), Error> {
    let text = match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => python_repr(value),
    };
    out.write_str(&text)
        .map_err(|e| Error::new(ErrorKind::WriteFailure, e.to_string()))
}

/// Python's `repr` of a template value.
fn python_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => "None".to_string(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_string(),
        ValueKind::Number => {
            if let Some(whole) = value.as_i64().filter(|_| !is_float(value)) {
                whole.to_string()
            } else {
                let float = f64::try_from(value.clone()).unwrap_or(f64::NAN);
                python_float(float)
            }
        }
        ValueKind::String => python_string(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = value
                .try_iter()
                .map(|it| it.map(|v| python_repr(&v)).collect())
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let mut parts = Vec::new();
            if let Ok(keys) = value.try_iter() {
                for key in keys {
                    let item = value.get_item(&key).unwrap_or_default();
                    parts.push(format!("{}: {}", python_repr(&key), python_repr(&item)));
                }
            }
            format!("{{{}}}", parts.join(", "))
        }
        _ => value.to_string(),
    }
}

fn is_float(value: &Value) -> bool {
    // A float holding a whole number (2.0) must still print as a float.
    value.to_string().contains(['.', 'e', 'E', 'n', 'i'])
}

fn python_float(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "inf" } else { "-inf" }.into();
    }
    let text = format!("{value:?}");
    match text.split_once('e') {
        // Python writes 1e+16 and 1e-05.
        Some((mantissa, exponent)) => {
            let (sign, digits) = match exponent.strip_prefix('-') {
                Some(digits) => ('-', digits),
                None => ('+', exponent),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => text,
    }
}

fn python_string(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// `json.dumps` as `transformers`' `tojson` calls it: `ensure_ascii=False`, `indent=None`,
/// Python's separators (`", "` and `": "`; `","` with an indent), no HTML escaping, keys in
/// insertion order; each option can be given as a keyword argument.
fn tojson(value: Value, options: minijinja::value::Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = options.get("indent")?;
    let sort_keys: Option<bool> = options.get("sort_keys")?;
    let ensure_ascii: Option<bool> = options.get("ensure_ascii")?;
    let separators: Option<Vec<String>> = options.get("separators")?;
    options.assert_all_used()?;
    let mut json = serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    if sort_keys == Some(true) {
        json = sorted(json);
    }
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "separators must be a pair of strings",
            ));
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let style = JsonStyle {
        indent,
        item,
        key,
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    python_json(&json, &style, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    item: String,
    key: String,
    ensure_ascii: bool,
}

fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// A JSON string literal; with `ensure_ascii`, non-ASCII as `\uXXXX` (surrogate pairs), as Python.
fn json_string(text: &str, ensure_ascii: bool, out: &mut String) {
    let literal = serde_json::Value::String(text.to_string()).to_string();
    if !ensure_ascii {
        out.push_str(&literal);
        return;
    }
    for c in literal.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
}

fn python_json(value: &serde_json::Value, style: &JsonStyle, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * depth));
        }
    };
    match value {
        serde_json::Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item);
                }
                newline(out, depth + 1);
                python_json(item, style, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        serde_json::Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item);
                }
                newline(out, depth + 1);
                json_string(key, style.ensure_ascii, out);
                out.push_str(&style.key);
                python_json(item, style, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        serde_json::Value::String(text) => json_string(text, style.ensure_ascii, out),
        serde_json::Value::Number(number) if number.is_f64() => {
            out.push_str(&python_float(number.as_f64().unwrap_or(f64::NAN)));
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, variables: serde_json::Value) -> Result<String, TemplateError> {
        let variables = variables.as_object().cloned().unwrap_or_default();
        ChatTemplate::new(source)?.render(&[Message::user("hi")], false, false, &variables)
    }

    #[test]
    fn values_print_as_python_prints_them() -> Result<(), TemplateError> {
        let out = render(
            "{{ a }} {{ b }} {{ c }} {{ d }} {{ e }} [{{ missing }}]",
            serde_json::json!({"a": true, "b": null, "c": 2.0, "d": [1, "two", false, null], "e": {"k": "it's"}}),
        )?;
        assert_eq!(out, "True None 2.0 [1, 'two', False, None] {'k': \"it's\"} []");
        Ok(())
    }

    #[test]
    fn tojson_is_json_dumps() -> Result<(), TemplateError> {
        let out = render(
            "{{ x | tojson }}|{{ x | tojson(indent=2) }}",
            serde_json::json!({"x": {"a": [1, 2.5], "b": "<é>"}}),
        )?;
        assert_eq!(
            out,
            "{\"a\": [1, 2.5], \"b\": \"<é>\"}|{\n  \"a\": [\n    1,\n    2.5\n  ],\n  \"b\": \"<é>\"\n}"
        );
        Ok(())
    }

    #[test]
    fn continue_final_message_cuts_after_the_prefill() -> Result<(), TemplateError> {
        let template = ChatTemplate::new("{% for m in messages %}<{{ m.role }}>{{ m.content }}</end>\n{% endfor %}")?;
        let messages = [Message::user("q"), Message::assistant("<think>partial ")];
        let out = template.render(&messages, false, true, &Map::new())?;
        assert_eq!(out, "<user>q</end>\n<assistant><think>partial ");
        Ok(())
    }

    #[test]
    fn raise_exception_fails_the_render() {
        let err = render("{{ raise_exception('no system role') }}", serde_json::json!({})).err();
        assert!(err.is_some_and(|e| e.to_string().contains("no system role")));
    }
}
