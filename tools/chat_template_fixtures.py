#!/usr/bin/env python3
"""Make the chat-template test fixtures from the real Hugging Face `transformers`.

specbench renders Hugging Face chat templates (Jinja) in Rust for assistant-prefill
requests (vLLM's `continue_final_message: true`, `add_generation_prompt: false`).
This script records what Python `transformers` renders, so the Rust renderer can be
tested against it without Python:

* `golden`: every request of the SpecBench data pack's `golden/requests.jsonl` that
  carries a `chat_template` is rendered with its `messages`, `chat_template`,
  `chat_template_kwargs` (passed as extra template variables), `add_generation_prompt`
  and `continue_final_message`. Only the 0-based line number, the tag, the SHA-256 of
  the UTF-8 rendered text and its length in code points are kept: the rendered text
  holds the pack's data, which is not committed.
* `own`: conversations written for this project (not from the pack), with the full
  expected text (or the error transformers raises). Pack templates are named by their
  path inside the pack (`template_file`) and read at run time; a few small templates
  written for this project (whitespace control, Python string methods, `tojson`,
  Python value printing, `raise_exception`) are stored inline (`template`).
* `environment`: the Jinja environment transformers compiles templates with, read
  from the installed library (class, trim_blocks, lstrip_blocks, extensions, the
  filters and globals transformers adds, and their signatures).

Rendering goes through exactly the path of
`tokenizer.apply_chat_template(messages, chat_template=..., tokenize=False,
add_generation_prompt=..., continue_final_message=..., **kwargs)`: a tiny in-memory
`PreTrainedTokenizerFast` (no download, no model) is built with the model's named
special tokens, so `apply_chat_template` passes them as template variables the way a
real tokenizer (and so vLLM) does. The tokens used are in `special_tokens` of the
output (Qwen3-14B: eos_token and pad_token, no bos_token; DeepSeek-R1-Distill-Llama-8B:
bos_token and eos_token).

Made with transformers 5.24.0 and jinja2 3.1.6 (Python 3.11); transformers 4.57.6
gives the same renders. torch is not needed.

Run from the repository root:

    pip install transformers jinja2
    SPECBENCH_DATA=/path/to/specbench python3 tools/chat_template_fixtures.py

It writes crates/specbench/tests/fixtures/chat_templates/transformers_renders.json
(or the path given with --out). The output is deterministic: running it twice gives
the same bytes.
"""

import argparse
import copy
import hashlib
import inspect
import json
import os
import sys
from pathlib import Path

import jinja2
import jinja2.sandbox
import transformers
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "crates/specbench/tests/fixtures/chat_templates/transformers_renders.json"

QWEN3 = "chat_templates/Qwen3.jinja"
DEEPSEEK = "chat_templates/deepseek.jinja"

# Named special tokens of the models' tokenizers (tokenizer_config.json). apply_chat_template
# passes `tokenizer.special_tokens_map` as template variables; absent tokens (Qwen3's bos_token)
# are not passed at all, so the template sees them as undefined.
QWEN3_TOKENS = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
DEEPSEEK_TOKENS = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}
SPECIAL_TOKENS_BY_TEMPLATE = {QWEN3: QWEN3_TOKENS, DEEPSEEK: DEEPSEEK_TOKENS}

_TOKENIZERS = {}


def tokenizer_with(special_tokens):
    """A minimal tokenizer whose only role is to carry the named special tokens."""
    key = json.dumps(special_tokens, sort_keys=True)
    if key not in _TOKENIZERS:
        backend = Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
        _TOKENIZERS[key] = PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)
    return _TOKENIZERS[key]


def render(template, messages, add_generation_prompt, continue_final_message, kwargs, special_tokens):
    """Render like vLLM: tokenizer.apply_chat_template(..., tokenize=False). Returns (text, error)."""
    tok = tokenizer_with(special_tokens)
    try:
        text = tok.apply_chat_template(
            copy.deepcopy(messages),
            chat_template=template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **copy.deepcopy(kwargs),
        )
    except Exception as exc:  # transformers raises ValueError, jinja2 TemplateError subclasses
        return None, exc
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text, None


def sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_environment():
    """Read the Jinja environment transformers compiles chat templates with."""
    env = _compile_jinja_template("{{ messages }}").environment
    plain = jinja2.sandbox.ImmutableSandboxedEnvironment()

    def signature(obj):
        try:
            return str(inspect.signature(obj))
        except (TypeError, ValueError):
            return None

    filters = {
        name: {"signature": signature(fn)}
        for name, fn in sorted(env.filters.items())
        if plain.filters.get(name) is not fn
    }
    globals_ = {}
    for name, value in sorted(env.globals.items()):
        if plain.globals.get(name) is value:
            continue
        entry = {"kind": "class" if inspect.isclass(value) else type(value).__name__}
        sig = signature(value)
        if sig is not None:
            entry["signature"] = sig
        globals_[name] = entry
    extensions = sorted(type(ext).__name__ for ext in env.extensions.values())
    extension_tags = sorted(tag for ext in env.extensions.values() for tag in ext.tags)
    return {
        "class": f"{type(env).__module__}.{type(env).__qualname__}",
        "trim_blocks": env.trim_blocks,
        "lstrip_blocks": env.lstrip_blocks,
        "keep_trailing_newline": env.keep_trailing_newline,
        "autoescape": env.autoescape if isinstance(env.autoescape, bool) else repr(env.autoescape),
        "undefined": f"{env.undefined.__module__}.{env.undefined.__qualname__}",
        "newline_sequence": env.newline_sequence,
        "extensions": extensions,
        "extension_tags": extension_tags,
        "custom_filters": filters,
        "custom_globals": globals_,
        "notes": [
            "tojson is json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, "
            "sort_keys=sort_keys) with those defaults: no HTML escaping, non-ASCII kept, keys in insertion "
            "order, separators ', ' and ': ' when indent is None.",
            "raise_exception(message) raises jinja2.exceptions.TemplateError(message).",
            "strftime_now(format) is datetime.now().strftime(format) (local time); no fixture uses it.",
            "Template variables are: messages, tools (None), documents (None), add_generation_prompt, the "
            "tokenizer's named special tokens that are set, then the extra kwargs (chat_template_kwargs), "
            "which override special tokens of the same name. continue_final_message is not a template variable.",
            "continue_final_message: transformers appends 'CONTINUE_FINAL_MESSAGE_TAG ' to the final message's "
            "content, renders, raises ValueError unless both content.strip() and 'CONTINUE_FINAL_MESSAGE_TAG' "
            "occur in the output, then cuts at the last 'CONTINUE_FINAL_MESSAGE_TAG'; if the tag is not followed "
            "by its space there (the template trimmed it), the kept text is also rstripped.",
            "apply_chat_template raises ValueError when add_generation_prompt and continue_final_message are both true.",
        ],
    }


def error_record(exc):
    message = str(exc)
    return {"type": type(exc).__name__, "message_prefix": message.split("\n")[0][:80]}


def golden_renders(data_dir):
    """Render every golden request that carries a chat_template; keep only hashes and lengths."""
    config = json.loads((data_dir / "chat_templates/config.json").read_text(encoding="utf-8"))
    file_texts = {}
    out = []
    lines = (data_dir / "golden/requests.jsonl").read_text(encoding="utf-8").split("\n")
    for line_no, line in enumerate(lines):
        if not line.strip():
            continue
        entry = json.loads(line)
        body = entry["request"]
        if "chat_template" not in body:
            continue
        template_file = "chat_templates/" + config[body["model"]]
        if template_file not in file_texts:
            file_texts[template_file] = (data_dir / template_file).read_text(encoding="utf-8")
        text, exc = render(
            body["chat_template"],
            body["messages"],
            body.get("add_generation_prompt", False),
            body.get("continue_final_message", False),
            body.get("chat_template_kwargs") or {},
            SPECIAL_TOKENS_BY_TEMPLATE[template_file],
        )
        record = {
            "line": line_no,
            "tag": entry["tag"],
            "template_file": template_file,
            "template_matches_file": body["chat_template"] == file_texts[template_file],
        }
        if exc is None:
            record["sha256"] = sha256(text)
            record["chars"] = len(text)
        else:
            # The error message may quote the pack's text: keep only its type.
            record["error_type"] = type(exc).__name__
        out.append(record)
    return out


# ---------------------------------------------------------------------------------------------
# Conversations and small templates written for this project (not from the pack).

SYSTEM = "You are a careful kitchen assistant. Answer in one short paragraph."
USER = "How do I keep fresh basil from wilting?"
USER2 = "And what about mint?"
HISTORY_ANSWER = (
    "<think>\nThe user wants a storage tip for basil; keep it short.\n</think>\n\n"
    "Trim the stems and keep the basil in a glass of water on the counter, like cut flowers."
)


def conv(*turns):
    return [{"role": role, "content": content} for role, content in turns]


BASIC = (("system", SYSTEM), ("user", USER))
MULTI = (("system", SYSTEM), ("user", USER), ("assistant", HISTORY_ANSWER), ("user", USER2))

RAW_NOTHINK = {"enable_thinking": False, "enable_raw_content": True}
RAW_THINK = {"enable_thinking": True, "enable_raw_content": True}
COOKED_NOTHINK = {"enable_thinking": False, "enable_raw_content": False}
COOKED_THINK = {"enable_thinking": True, "enable_raw_content": False}

TEMPLATE_WHITESPACE = """\
{# whitespace control: trim_blocks and lstrip_blocks, with no '-' markers #}
{% for message in messages %}
    {% if message.role == 'user' %}
[user] {{ message.content }}
    {% elif message.role == 'assistant' %}
[assistant] {{ message.content }}
    {% else %}
[{{ message.role }}] {{ message.content }}
    {% endif %}
    {# an indented comment line #}
{% endfor %}
text before a tag {% if add_generation_prompt %}stays{% endif %}
    {% if add_generation_prompt %}
[assistant]
    {% endif %}
{%+ if true %}plus-left keeps indentation
{% endif %}
{% if true +%}
plus-right keeps the newline
{% endif %}
  {{ 'an expression line keeps its indentation' }}
{%- if true %}
 minus-left ate the newline before it
{% endif -%}
   minus-right ate this indentation
end"""

TEMPLATE_PY_METHODS = """\
{%- set ns = namespace(count=0, last_user=-1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if message.role == 'user' and ns.last_user == -1 %}
        {%- set ns.last_user = index %}
    {%- endif %}
    {%- if message.content is string and message.content.startswith('<think>') %}
        {%- set ns.count = ns.count + 1 %}
    {%- endif %}
{%- endfor %}
last_user={{ ns.last_user }} starts_with_think={{ ns.count }}
{% for message in messages %}
{{ loop.index0 }}/{{ loop.index }}/{{ loop.length }} first={{ loop.first }} last={{ loop.last }} role={{ message['role'] }}
{%- set content = message.content %}
{%- if '</think>' in content %}
 reasoning=[{{ content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}] answer=[{{ content.split('</think>')[-1].lstrip('\\n') }}]
{%- else %}
 text=[{{ content.strip() }}] ends_dot={{ content.endswith('.') }} strip_chars=[{{ content.strip('H.') }}]
{%- endif %}
 reversed=[{{ message.role[::-1] }}] slice=[{{ content[:5] }}|{{ content[-3:] }}] is_string={{ content is string }}
 words={{ content.split() | length }} trimmed=[{{ ('  ' + message.role + '  ') | trim }}] concat={{ message.role ~ '#' ~ loop.index }}
{% endfor %}
missing=[{{ missing_variable }}] defined={{ missing_variable is defined }} attr=[{{ messages[0].no_such_key }}]"""

TEMPLATE_VALUES = """\
bool={{ flag }} none={{ nothing }} int={{ count }} float={{ ratio }} whole_float={{ whole }}
list={{ items }} dict={{ extra }}
tojson={{ extra | tojson }}
tojson_list={{ items | tojson }}
tojson_str={{ "a<b>&'\\"" | tojson }}
tojson_indent={{ extra | tojson(indent=2) }}
tojson_sorted={{ extra | tojson(sort_keys=True) }}
tojson_ascii={{ extra | tojson(ensure_ascii=True) }}
tojson_separators={{ items | tojson(separators=(',', ':')) }}
{%- for message in messages %}
{{ message.role }}: {{ message.content }}
{%- endfor %}"""

TEMPLATE_STRIPS_CONTENT = """\
{%- for message in messages %}
<{{ message.role }}>{{ message.content | trim }}</{{ message.role }}>
{% endfor %}"""

TEMPLATE_RAISES = """\
{%- if messages[0].role != 'system' %}
    {{- raise_exception('The first message must be a system message.') }}
{%- endif %}
{%- for message in messages %}
{{ message.role }}: {{ message.content }}
{% endfor %}"""

VALUE_KWARGS = {
    "flag": True,
    "nothing": None,
    "count": 3,
    "ratio": 2.5,
    "whole": 2.0,
    "items": [1, "two", False, None],
    "extra": {"name": "Café ☕", "html": "<b>&</b>", "nested": {"n": 1, "ok": True}, "zero": None},
}


def own_cases():
    q, d = QWEN3, DEEPSEEK
    cases = [
        # name, template_file, inline template, messages, add_generation_prompt, continue_final_message, kwargs
        ("qwen3_prefill_empty_think_raw_nothink", q, None,
         conv(*BASIC, ("assistant", "<think>\n</think>")), False, True, RAW_NOTHINK),
        ("qwen3_prefill_open_think_raw_nothink", q, None,
         conv(*BASIC, ("assistant", "<think>\nBasil hates the cold.")), False, True, RAW_NOTHINK),
        ("qwen3_prefill_open_think_raw_think_trailing_space", q, None,
         conv(*BASIC, ("assistant", "<think>\nBasil hates the cold.\n\nWait, ")), False, True, RAW_THINK),
        ("qwen3_prefill_closed_think_raw_think", q, None,
         conv(*BASIC, ("assistant", "<think>\nBasil hates the cold.\n</think>\n\nKeep it out of")), False, True,
         RAW_THINK),
        ("qwen3_prefill_trailing_newlines_raw_nothink", q, None,
         conv(*BASIC, ("assistant", "Here are two tips:\n\n")), False, True, RAW_NOTHINK),
        ("qwen3_prefill_non_ascii_raw_nothink", q, None,
         conv(("system", "Réponds en français."), ("user", "Basilic frais ?"),
              ("assistant", "Voilà — gardez-le hors du frigo 🌿 ")), False, True, RAW_NOTHINK),
        ("qwen3_prefill_plain_cooked_nothink", q, None,
         conv(*BASIC, ("assistant", "Sure, here is")), False, True, COOKED_NOTHINK),
        ("qwen3_prefill_plain_cooked_think", q, None,
         conv(*BASIC, ("assistant", "Sure, here is")), False, True, COOKED_THINK),
        ("qwen3_prefill_open_think_cooked_think", q, None,
         conv(*BASIC, ("assistant", "<think>\nBasil hates the cold.")), False, True, COOKED_THINK),
        ("qwen3_prefill_closed_think_cooked_nothink", q, None,
         conv(*BASIC, ("assistant", "<think>\nBasil hates the cold.\n</think>\n\nKeep it out of")), False, True,
         COOKED_NOTHINK),
        ("qwen3_prefill_empty_think_cooked_nothink_raises", q, None,
         conv(*BASIC, ("assistant", "<think>\n</think>")), False, True, COOKED_NOTHINK),
        ("qwen3_prefill_no_kwargs", q, None,
         conv(*BASIC, ("assistant", "<think>\nBasil hates the cold.")), False, True, {}),
        ("qwen3_prefill_no_system_raw_nothink", q, None,
         conv(("user", USER), ("assistant", "<think>\n</think>")), False, True, RAW_NOTHINK),
        ("qwen3_generation_prompt_raw_nothink", q, None, conv(*BASIC), True, False, RAW_NOTHINK),
        ("qwen3_generation_prompt_raw_think", q, None, conv(*BASIC), True, False, RAW_THINK),
        ("qwen3_generation_prompt_no_kwargs", q, None, conv(*BASIC), True, False, {}),
        ("qwen3_no_generation_prompt_no_prefill", q, None, conv(*BASIC), False, False, RAW_NOTHINK),
        ("qwen3_both_flags_raises", q, None,
         conv(*BASIC, ("assistant", "<think>\n</think>")), True, True, RAW_NOTHINK),
        ("qwen3_multi_turn_prefill_raw_nothink", q, None,
         conv(*MULTI, ("assistant", "<think>\nMint spreads fast")), False, True, RAW_NOTHINK),
        ("qwen3_multi_turn_prefill_cooked_think", q, None,
         conv(*MULTI, ("assistant", "<think>\nMint spreads fast")), False, True, COOKED_THINK),
        ("qwen3_multi_turn_generation_prompt_cooked_nothink", q, None, conv(*MULTI), True, False, COOKED_NOTHINK),
        ("deepseek_prefill_open_think_raw", d, None,
         conv(*BASIC, ("assistant", "<think>\nThe question is about herbs.")), False, True,
         {"enable_raw_content": True}),
        ("deepseek_prefill_open_think_cooked", d, None,
         conv(*BASIC, ("assistant", "<think>\nThe question is about herbs.")), False, True,
         {"enable_raw_content": False}),
        ("deepseek_prefill_closed_think_raw", d, None,
         conv(*BASIC, ("assistant", "<think>\nHerbs.\n</think>\n\nKeep it")), False, True,
         {"enable_raw_content": True}),
        ("deepseek_prefill_closed_think_cooked_raises", d, None,
         conv(*BASIC, ("assistant", "<think>\nHerbs.\n</think>\n\nKeep it")), False, True,
         {"enable_raw_content": False}),
        ("deepseek_multi_turn_prefill_raw", d, None,
         conv(*MULTI, ("assistant", "<think>\nMint spreads fast")), False, True, {"enable_raw_content": True}),
        ("deepseek_generation_prompt", d, None, conv(*BASIC), True, False, {}),
        ("deepseek_no_generation_prompt_no_prefill", d, None, conv(*BASIC), False, False, {}),
        ("inline_whitespace_control", None, TEMPLATE_WHITESPACE,
         conv(*BASIC, ("assistant", "Keep it dry.")), True, False, {}),
        ("inline_whitespace_control_prefill", None, TEMPLATE_WHITESPACE,
         conv(*BASIC, ("assistant", "Keep it ")), False, True, {}),
        ("inline_python_methods", None, TEMPLATE_PY_METHODS,
         conv(("system", "  Hello there.  "), ("user", USER), ("assistant", HISTORY_ANSWER), ("user", USER2)),
         False, False, {}),
        ("inline_values_and_tojson", None, TEMPLATE_VALUES,
         conv(("user", USER)), False, False, VALUE_KWARGS),
        ("inline_template_strips_prefill_space", None, TEMPLATE_STRIPS_CONTENT,
         conv(("user", USER), ("assistant", "Okay, so ")), False, True, {}),
        ("inline_raise_exception", None, TEMPLATE_RAISES,
         conv(("user", USER), ("assistant", "Okay")), False, True, {}),
    ]
    return cases


def own_renders(data_dir):
    out = []
    for name, template_file, inline, messages, agp, cfm, kwargs in own_cases():
        if template_file is not None:
            template = (data_dir / template_file).read_text(encoding="utf-8")
            special_tokens = SPECIAL_TOKENS_BY_TEMPLATE[template_file]
        else:
            template = inline
            special_tokens = QWEN3_TOKENS
        text, exc = render(template, messages, agp, cfm, kwargs, special_tokens)
        record = {"name": name, "template_file": template_file}
        if template_file is None:
            record["template"] = inline
        record.update(
            {
                "messages": messages,
                "add_generation_prompt": agp,
                "continue_final_message": cfm,
                "kwargs": kwargs,
                "special_tokens": special_tokens,
            }
        )
        if exc is None:
            record["expected"] = text
            record["sha256"] = sha256(text)
            record["chars"] = len(text)
        else:
            record["expected"] = None
            record["expected_error"] = error_record(exc)
        out.append(record)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output JSON file")
    args = parser.parse_args()
    data = os.environ.get("SPECBENCH_DATA")
    if not data:
        sys.exit("set SPECBENCH_DATA to the SpecBench data pack folder (the one holding golden/ and chat_templates/)")
    data_dir = Path(data)

    result = {
        "generator": "tools/chat_template_fixtures.py",
        "transformers_version": transformers.__version__,
        "jinja2_version": jinja2.__version__,
        "render_call": "PreTrainedTokenizerFast.apply_chat_template(messages, chat_template=template, tokenize=False, "
        "add_generation_prompt=..., continue_final_message=..., **kwargs), tokenizer built with special_tokens",
        "special_tokens": SPECIAL_TOKENS_BY_TEMPLATE,
        "environment": describe_environment(),
        "golden": golden_renders(data_dir),
        "own": own_renders(data_dir),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    golden = result["golden"]
    errors = sum(1 for g in golden if "error_type" in g)
    print(f"wrote {args.out}: {len(golden)} golden renders ({errors} errors), {len(result['own'])} own cases")


if __name__ == "__main__":
    main()
