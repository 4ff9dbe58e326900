#!/usr/bin/env python3
"""Writes tests/fixtures/chat_templates.json: chat templates rendered by HF transformers 5.23's
own renderer (`render_jinja_template`: jinja2's sandbox with trim_blocks, lstrip_blocks, loop
controls, Python string / dict methods, `tojson` without HTML escaping, `raise_exception`,
`strftime_now`, `namespace`), so the model crate's minijinja environment is checked against the
renders a checkpoint's template gets in HF.

Each case: a template, the messages, `add_generation_prompt`, and either the rendered text or
the error message `raise_exception` gave. Some cases pass extra template variables (`kwargs`:
HF's extra `apply_chat_template` arguments, vLLM's `chat_template_kwargs`), or ask for
`continue_final_message` (the prompt ends inside the final message, cut where transformers'
tag lands; for those the error text is transformers' own, so only its presence is compared). With the real DeepSeek-V3 tokenizer fetched
(scripts/fetch-tokenizer.sh), its template is a case too, as is the repository's function-calling template
(crates/model/templates/deepseek-v3-tools.jinja), with a conversation holding tool calls and
their outputs and, for the latter, `tools`. Given a llama.cpp source tree (`--llama-cpp DIR`,
the one ../shared/notes/anchors.md builds), DeepSeek-V3.1's hybrid template as llama.cpp keeps
it (models/templates/deepseek-ai-DeepSeek-V3.1.jinja) is a case too: thinking on and off,
tool calls in the history, a continued message.

Run with transformers==5.23.0 installed:
python tests/reference/chat_templates.py [--llama-cpp DIR]
"""
import argparse
import json
from pathlib import Path

import transformers
from transformers.utils.chat_template_utils import render_jinja_template

ROOT = Path(__file__).resolve().parent.parent.parent
OUT = ROOT / "tests" / "fixtures" / "chat_templates.json"
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"

CONVERSATION = [
    {"role": "system", "content": "  You are terse.\n"},
    {"role": "user", "content": "What is 2+2? Ünïcödé 深度求索 \"quoted\" <tag> & more"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
    {"role": "user", "content": "hello again"},
]

# A function-calling exchange in OpenAI's message shape: an assistant turn that only calls
# tools (content None), their outputs, then the answer.
TOOL_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Weather in Paris and in Zürich?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\"}"}},
    ]},
    {"role": "tool", "tool_call_id": "call_1", "content": "{\"celsius\": 18}"},
    {"role": "tool", "tool_call_id": "call_2", "content": "{\"celsius\": 12}"},
    {"role": "assistant", "content": "Paris 18 °C, Zürich 12 °C."},
    {"role": "user", "content": "And Oslo?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_3", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
    ]},
    {"role": "tool", "tool_call_id": "call_3", "content": "{\"celsius\": 4}"},
]

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current temperature in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}},
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}},
]

# The repository's function-calling template (model serve --chat-template).
TOOLS_TEMPLATE = ROOT / "crates" / "model" / "templates" / "deepseek-v3-tools.jinja"

# A final assistant message to continue: with trailing whitespace (kept by templates that keep
# spacing, trimmed by those that trim) and without.
CONTINUED = [
    CONVERSATION[:3] + [{"role": "user", "content": "and 3+3?"},
                        {"role": "assistant", "content": "It is "}],
    CONVERSATION[:3] + [{"role": "user", "content": "and 3+3?"},
                        {"role": "assistant", "content": "<think>\nsix\n</think>\n\nIt is"}],
]

# Extra template variables, as DeepSeek-V3.1's hybrid template reads `thinking`; a kwarg may
# also replace a special token.
KWARGS = {
    "thinking_kwarg": [{"thinking": True}, {"thinking": False, "greeting": "hi"},
                       {"eos_token": "<END>"}],
    # V3.1's own switch, and the name llama.cpp's copy of it also reads.
    "deepseek_v31": [{"thinking": True}, {"thinking": False}, {"enable_thinking": True}],
}

TEMPLATES = {
    # Block tags on their own indented lines: trim_blocks drops the newline after a tag,
    # lstrip_blocks the indentation before one.
    "trim_and_lstrip_blocks": """{{ bos_token }}
{% for m in messages %}
    {% if m['role'] == 'user' %}
User: {{ m['content'] }}
    {% elif m['role'] == 'assistant' %}
Assistant: {{ m['content'] }}{{ eos_token }}
    {% else %}
System: {{ m['content'] }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
Assistant:
{% endif %}""",
    # Python methods on strings, dicts and lists (minijinja's pycompat).
    "python_methods": """{%- for m in messages -%}
[{{ m['content'].strip() }}|{{ m['content'].lstrip() }}|{{ m['content'].rstrip() }}]
{{- m['content'].startswith('What') }},{{ m['content'].endswith('4') }}
{{- '|' + m['content'].replace('a', 'A') + '|' + m['content'].upper() + '|' + m['content'].lower() }}
{{- '|' + m['content'].split('</think>')[-1] + '|' + (m['content'].split() | join('_')) }}
{{- '|' + m.get('name', 'anon') + '|' + (m.keys() | list | join(',')) }}
{%- for k, v in m.items() %}({{ k }}={{ v | length }}){% endfor %}
{{- '|' + m['content'] | trim + '|' + m['content'].title() }}
{% endfor %}""",
    # tojson as HF overrides it: json.dumps(ensure_ascii=False), no HTML escaping, and indent.
    "tojson": """{{ messages | tojson }}
{{ messages[1] | tojson(indent=2) }}
{{ {'a': [1, 2.5, true, none], 'b': 'x<y>&'} | tojson }}
{{ 'plain' | tojson }}""",
    # {% break %} / {% continue %} (jinja2.ext.loopcontrols) and macros.
    "loop_controls_and_macros": """{% macro turn(m, n) -%}
<{{ n }}:{{ m.role }}>{{ m.content | length }}
{%- endmacro %}
{% for m in messages %}
{% if m.role == 'system' %}{% continue %}{% endif %}
{% if loop.index > 3 %}{% break %}{% endif %}
{{ turn(m, loop.index) }}
{% endfor %}""",
    # namespace() attributes set in a loop, as DeepSeek's own templates keep state.
    "namespace": """{% set ns = namespace(system='', turns=0) %}
{% for m in messages %}
{% if m.role == 'system' %}{% set ns.system = ns.system + m.content.strip() %}{% else %}{% set ns.turns = ns.turns + 1 %}{% endif %}
{% endfor %}
{{ bos_token }}{{ ns.system }}|{{ ns.turns }}
{% if add_generation_prompt %}<｜Assistant｜>{% endif %}""",
    # raise_exception, as templates refuse roles they do not support.
    "raise_exception": """{% for m in messages %}
{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}
{{ m.content }}
{% endfor %}""",
    # HF passes `tools` and `documents` as None when there are none: `is not none` is false
    # (an undefined variable would be "not none").
    "tools_and_documents_none": """{% if tools is not none %}TOOLS{% endif %}
{% if documents is not none %}DOCS{% endif %}
{% if tools %}T{% endif %}{{ messages | length }}""",
    # A hybrid template in the manner of DeepSeek-V3.1's: a `thinking` variable (off unless
    # given) opens or closes the think block after the generation prompt.
    "thinking_kwarg": """{% if not thinking is defined %}{% set thinking = false %}{% endif %}
{{ bos_token }}{% for m in messages %}
{% if m['role'] == 'user' %}<｜User｜>{{ m['content'] }}
{% elif m['role'] == 'assistant' %}<｜Assistant｜>{{ m['content'] }}{{ eos_token }}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}<｜Assistant｜>{% if thinking %}<think>{% else %}</think>{% endif %}{% endif %}
{{ greeting | default('') }}""",
    # Messages trimmed by the template: a continued message's trailing space goes too.
    "trimmed_messages": """{% for m in messages %}<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>{% endfor %}""",
    # R1's way with assistant turns (the reasoning dropped): a continued message that holds
    # reasoning is not in the render, which is an error.
    "drops_reasoning": """{% for m in messages %}{% if m.role == 'assistant' %}A:{{ m.content.split('</think>')[-1] }}{% else %}U:{{ m.content }}{% endif %}{% endfor %}""",
    # strftime_now (its output depends on the day: only its length is compared).
    "strftime_now": """{{ strftime_now('%Y-%m-%d') | length }}{{ messages | length }}""",
}


def render(template, messages, add_generation_prompt, tools=None, kwargs=None,
           continue_final_message=False):
    # As apply_chat_template merges them: the kwargs over the special tokens.
    variables = {"bos_token": BOS, "eos_token": EOS, **(kwargs or {})}
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            tools=tools,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            **variables,
        )
        return {"rendered": rendered[0]}
    except Exception as e:  # noqa: BLE001 - the message is the expected output
        return {"error": str(e)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", type=Path,
                        help="a llama.cpp source tree, for DeepSeek-V3.1's template")
    args = parser.parse_args()
    templates = dict(TEMPLATES)
    v3 = ROOT / "target" / "deepseek-v3-tokenizer" / "tokenizer_config.json"
    if v3.is_file():
        templates["deepseek_v3"] = json.loads(v3.read_text())["chat_template"]
    else:
        print(f"no {v3}: the DeepSeek-V3 template is left out (run scripts/fetch-tokenizer.sh)")
    templates["deepseek_v3_tools"] = TOOLS_TEMPLATE.read_text()
    if args.llama_cpp:
        templates["deepseek_v31"] = (
            args.llama_cpp / "models" / "templates" / "deepseek-ai-DeepSeek-V3.1.jinja").read_text()
    else:
        print("no --llama-cpp: the DeepSeek-V3.1 template is left out")
    cases = []
    for name, template in templates.items():
        for add in (True, False):
            messages = CONVERSATION if name != "raise_exception" else CONVERSATION[1:]
            cases.append({"name": f"{name}/{add}", "template": template, "messages": messages,
                          "add_generation_prompt": add, **render(template, messages, add)})
        if name in ("deepseek_v3", "deepseek_v3_tools", "deepseek_v31"):
            # Calls and their outputs in the history (V3's own template shows no tools).
            tools = TOOLS if name == "deepseek_v3_tools" else None
            for add in (True, False):
                cases.append({"name": f"{name}/tool_history/{add}", "template": template,
                              "messages": TOOL_CONVERSATION, "tools": tools,
                              "add_generation_prompt": add,
                              **render(template, TOOL_CONVERSATION, add, tools)})
            if name == "deepseek_v31":
                # The history's last turn a user's after the tool outputs: the prompt opens
                # the think block with thinking on.
                messages = TOOL_CONVERSATION[:-2] + [{"role": "user", "content": "Thanks."}]
                kwargs = {"thinking": True}
                cases.append({"name": f"{name}/tool_history/thinking", "template": template,
                              "messages": messages, "add_generation_prompt": True,
                              "kwargs": kwargs,
                              **render(template, messages, True, kwargs=kwargs)})
        if name in KWARGS:
            for kwargs in KWARGS[name]:
                for add in (True, False):
                    cases.append({"name": f"{name}/{json.dumps(kwargs)}/{add}",
                                  "template": template, "messages": CONVERSATION,
                                  "add_generation_prompt": add, "kwargs": kwargs,
                                  **render(template, CONVERSATION, add, kwargs=kwargs)})
        if name in ("trim_and_lstrip_blocks", "deepseek_v3", "deepseek_v3_tools", "deepseek_v31",
                    "thinking_kwarg", "trimmed_messages", "drops_reasoning"):
            for i, messages in enumerate(CONTINUED):
                cases.append({"name": f"{name}/continue_final_message/{i}", "template": template,
                              "messages": messages, "add_generation_prompt": False,
                              "continue_final_message": True,
                              **render(template, messages, False, continue_final_message=True)})
        if name == "raise_exception":
            cases.append({"name": f"{name}/system", "template": template, "messages": CONVERSATION,
                          "add_generation_prompt": True, **render(template, CONVERSATION, True)})
    OUT.write_text(json.dumps({"transformers": transformers.__version__, "bos_token": BOS,
                               "eos_token": EOS, "cases": cases}, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
