#!/usr/bin/env python3
"""Drives a running `model serve` with the official `openai` Python client and asserts what
comes back: models, chat and completions (whole and streamed, with usage), n > 1, token-id
prompts, logprobs, penalties and logit_bias, tools, structured outputs, vLLM's extra parameters
and chat-template fields, `/tokenize` and `/detokenize`, the Responses API, and the errors the client maps to
exceptions.

    python scripts/openai_client_check.py BASE_URL MODEL API_KEY

Run by scripts/check-openai-client.sh against the fixture checkpoint (a tiny random model, so
texts are gibberish: the checks compare the server with itself, greedy against greedy)."""
import sys

import openai

base, model, key = sys.argv[1:4]
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
checks = []


def check(name):
    def wrap(f):
        f()
        checks.append(name)
        print(f"ok: {name}", flush=True)

    return wrap


@check("models")
def _():
    assert [m.id for m in client.models.list().data] == [model]


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]


@check("chat: whole and streamed agree")
def _():
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10, temperature=0)
    assert r.object == "chat.completion" and r.model == model and r.id.startswith("chatcmpl-")
    c = r.choices[0]
    assert c.index == 0 and c.message.role == "assistant"
    assert c.finish_reason == ("length" if r.usage.completion_tokens == 10 else "stop")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=MESSAGES,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == c.message.content, (text, c.message.content)
    finish = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finish == [c.finish_reason], finish
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == r.usage.total_tokens


@check("chat: n > 1, seeded sampling, logprobs, vLLM extras")
def _():
    kw = dict(model=model, messages=MESSAGES, max_tokens=6, temperature=1.0, seed=11, n=3,
              logprobs=True, top_logprobs=2, extra_body={"top_k": 20, "ignore_eos": True})
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.usage.completion_tokens == 18
    for c in a.choices:
        assert c.finish_reason == "length" and len(c.logprobs.content) == 6
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in c.logprobs.content)
    streamed = {}
    for ch in client.chat.completions.create(**kw, stream=True):
        for c in ch.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert [streamed[i] for i in range(3)] == [c.message.content for c in a.choices]


@check("completions: text and token-id prompts, whole and streamed")
def _():
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=8, temperature=0,
                                  logprobs=2, extra_body={"return_token_ids": True})
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    c = r.choices[0]
    assert len(c.logprobs.tokens) == r.usage.completion_tokens == len(c.logprobs.token_logprobs)
    ids = c.model_extra["token_ids"]
    assert len(ids) == r.usage.completion_tokens
    text = "".join(
        ch.choices[0].text
        for ch in client.completions.create(model=model, prompt="Once upon a time", max_tokens=8,
                                            temperature=0, stream=True)
    )
    assert text == c.text, (text, c.text)
    # The same continuation from the prompt's ids: the tiny tokenizer's BOS (0), then one id
    # per byte, equal to the byte.
    prompt_ids = [0] + list(b"Once upon a time")
    r2 = client.completions.create(model=model, prompt=prompt_ids, max_tokens=8, temperature=0,
                                   extra_body={"return_token_ids": True})
    assert r2.usage.prompt_tokens == r.usage.prompt_tokens
    assert r2.choices[0].model_extra["token_ids"] == ids
    many = client.completions.create(model=model, prompt=[5, 17, 42], max_tokens=4, n=2, seed=3,
                                     temperature=1.0, stop=["\u0001never"])
    assert sorted(c.index for c in many.choices) == [0, 1]
    # A batch of prompts: prompt p's choices from p * n, each as the prompt alone.
    prompts = ["Once upon a time", "The end"]
    batch = client.completions.create(model=model, prompt=prompts, max_tokens=4, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    for p, c in zip(prompts, batch.choices):
        alone = client.completions.create(model=model, prompt=p, max_tokens=4, temperature=0)
        assert c.text == alone.choices[0].text, (p, c.text, alone.choices[0].text)


@check("completions: echo with logprobs scores the prompt (lm-eval's loglikelihood request)")
def _():
    context = [0] + list(b"Question: 2 + 2 =")
    prompt = context + list(b" 4")
    r = client.completions.create(model=model, prompt=prompt, max_tokens=1, temperature=0,
                                  logprobs=1, echo=True, seed=1234)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(prompt) + 1 == len(lp.top_logprobs)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    # The ids decoded, the tokenizer's BOS text first (as vLLM echoes a token-id prompt).
    assert r.choices[0].text.split("Question: 2 + 2 = 4")[0] in ("", "<｜begin▁of▁sentence｜>"), r.choices[0].text
    # lm-eval's parse: the continuation's log-likelihood and whether it is the greedy one.
    ctxlen = len(context)
    scores, tops = lp.token_logprobs[ctxlen:-1], lp.top_logprobs[ctxlen:-1]
    assert len(scores) == 2 and all(s <= 0 for s in scores)
    assert all(max(t.values()) >= s for s, t in zip(scores, tops))
    # max_tokens 0: the prompt alone.
    z = client.completions.create(model=model, prompt=prompt, max_tokens=0, logprobs=0, echo=True)
    assert z.usage.completion_tokens == 0 and z.choices[0].finish_reason == "length"
    assert z.choices[0].logprobs.token_logprobs[1:] == lp.token_logprobs[1:-1]


@check("penalties and logit_bias, as the client sends them")
def _():
    kw = dict(model=model, prompt=[5, 17, 42], max_tokens=6, temperature=0,
              extra_body={"ignore_eos": True, "return_token_ids": True})
    forced = client.completions.create(**kw, logit_bias={"7": 100})
    assert forced.choices[0].model_extra["token_ids"] == [7] * 6, forced
    plain = client.completions.create(**kw)
    same = client.completions.create(**kw, presence_penalty=0, frequency_penalty=0)
    assert same.choices[0].text == plain.choices[0].text
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6,
                                       frequency_penalty=1.0, presence_penalty=0.5,
                                       extra_body={"repetition_penalty": 1.3})
    assert r.choices[0].finish_reason in ("length", "stop")


@check("tools: calls and their outputs in the history, as the client sends them")
def _():
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Current temperature in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"celsius": 18}'},
    ]
    r = client.chat.completions.create(model=model, messages=messages, tools=tools,
                                       tool_choice="auto", parallel_tool_calls=True,
                                       max_tokens=6, temperature=0)
    c = r.choices[0]
    # The random model writes no call: its reply is content, as without tools.
    assert c.finish_reason in ("length", "stop") and c.message.tool_calls is None, c
    # The reply goes back into the history as the client gives it.
    follow = messages + [c.message.model_dump(exclude_none=True), {"role": "user", "content": "Thanks"}]
    r2 = client.chat.completions.create(model=model, messages=follow, tools=tools, max_tokens=4)
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens
    chunks = list(client.chat.completions.create(model=model, messages=messages, tools=tools,
                                                 max_tokens=6, temperature=0, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == c.message.content, (text, c.message.content)
    # A named tool_choice forces one call, its arguments valid under the schema (id 10, the
    # newline byte, discouraged so the random model does not fill the string field forever).
    import json

    r = client.chat.completions.create(
        model=model, messages=messages, tools=tools, max_tokens=300, temperature=1.0, seed=1,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        logit_bias={"10": -100})
    c = r.choices[0]
    if c.finish_reason == "tool_calls":
        (call,) = c.message.tool_calls
        assert call.function.name == "get_weather" and call.id.startswith("call_"), call
        assert isinstance(json.loads(call.function.arguments)["city"], str), call
    else:
        assert c.finish_reason == "length", c


@check("structured outputs: the client's parse() with a pydantic model, json_object")
def _():
    from typing import Literal

    import pydantic

    class Weather(pydantic.BaseModel):
        city: Literal["Paris", "Oslo"]
        # Bounded, so that a random model's output fits the budget on any machine.
        celsius: int = pydantic.Field(ge=-40, le=50)
        sunny: bool

    r = client.chat.completions.parse(model=model, messages=MESSAGES, response_format=Weather,
                                      max_tokens=60, temperature=1.0, seed=3)
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    assert isinstance(c.message.parsed, Weather), c.message
    r = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=200,
                                       response_format={"type": "json_object"})
    text = r.choices[0].message.content
    if r.choices[0].finish_reason == "stop":
        import json
        assert isinstance(json.loads(text), dict), text
    c = client.completions.create(model=model, prompt="Pick:", max_tokens=10,
                                  extra_body={"guided_choice": ["red", "green"]})
    assert c.choices[0].text in ("red", "green"), c


@check("template fields (extra_body) and /tokenize agree with the chat prompt")
def _():
    import json
    import urllib.request

    def post(path, body):
        req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(), headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.load(resp)

    cont = MESSAGES + [{"role": "assistant", "content": "Sure, "}]
    extra = {"continue_final_message": True, "add_generation_prompt": False,
             "chat_template_kwargs": {"unused_by_this_template": 1}}
    r = client.chat.completions.create(model=model, messages=cont, max_tokens=4, temperature=0,
                                       extra_body=extra)
    t = post("/tokenize", {"model": model, "messages": cont, **extra})
    assert t["count"] == r.usage.prompt_tokens == len(t["tokens"]), (t, r.usage)
    # Without continue_final_message the assistant turn is closed and a new one opened.
    plain = client.chat.completions.create(model=model, messages=cont, max_tokens=1)
    assert plain.usage.prompt_tokens != r.usage.prompt_tokens
    d = post("/detokenize", {"tokens": t["tokens"]})
    assert d["prompt"].endswith("Sure, "), d


@check("tools: parallel_tool_calls=False forces one call; a streamed call in pieces")
def _():
    tools = [{"type": "function", "function": {"name": "now", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}}]
    r = client.chat.completions.create(model=model, messages=MESSAGES, tools=tools,
                                       tool_choice="required", parallel_tool_calls=False,
                                       max_tokens=300, temperature=1.0, seed=4, n=3)
    for c in r.choices:
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c
    # Streamed, the call arrives in pieces (its name, then its arguments as they are
    # written); the client's stream helper puts them together into the same call.
    weather = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
        "required": ["city"], "additionalProperties": False}}}]
    kw = dict(model=model, messages=MESSAGES, tools=weather, tool_choice="required",
              parallel_tool_calls=False, max_tokens=300, temperature=1.0, seed=6)
    whole = client.chat.completions.create(**kw).choices[0]
    pieces = 0
    with client.chat.completions.stream(**kw) as stream:
        for event in stream:
            pieces += event.type == "tool_calls.function.arguments.delta"
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == whole.finish_reason == "tool_calls", (final, whole)
    (a,), (b,) = final.message.tool_calls, whole.message.tool_calls
    assert (a.function.name, a.function.arguments) == (b.function.name, b.function.arguments)
    assert pieces > 1, pieces


@check("responses API: create, stream (the client's event accumulator), parse(), function calls")
def _():
    r = client.responses.create(model=model, input="Hello!", instructions="Be brief.",
                                max_output_tokens=8, temperature=0)
    assert r.object == "response" and r.status == "incomplete", r
    assert r.incomplete_details.reason == "max_output_tokens"
    chat = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8,
                                          temperature=0)
    assert r.output_text == chat.choices[0].message.content, (r.output_text, chat)
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    from typing import Literal

    import pydantic

    class City(pydantic.BaseModel):
        city: Literal["Paris", "Oslo"]

    p = client.responses.parse(model=model, input="Where?", text_format=City,
                               max_output_tokens=60, temperature=0)
    assert p.status == "completed" and isinstance(p.output_parsed, City), p
    # The streaming helper rebuilds the response from the events (it wants them in order and
    # a `response.completed`, which a reply cut by max_output_tokens does not end with).
    with client.responses.stream(model=model, input="Where?", text_format=City,
                                 max_output_tokens=60, temperature=0) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == final.output_text == p.output_text, (deltas, final.output_text)
    assert final.output_parsed == p.output_parsed
    # A forced call, and the call sent back with its output as the next turn's input.
    tools = [{"type": "function", "name": "now", "parameters": {
        "type": "object", "properties": {}, "additionalProperties": False}}]
    r = client.responses.create(model=model, input="Time?", tools=tools, tool_choice="required",
                                parallel_tool_calls=False, max_output_tokens=300)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "now" and call.arguments == "{}", call
    follow = [{"role": "user", "content": "Time?"}, call.model_dump(exclude_none=True),
              {"type": "function_call_output", "call_id": call.call_id, "output": "12:00"}]
    r2 = client.responses.create(model=model, input=follow, tools=tools, max_output_tokens=4)
    assert r2.usage.input_tokens > r.usage.input_tokens, (r2.usage, r.usage)


@check("errors become the client's exceptions")
def _():
    expect = [
        (openai.NotFoundError, dict(model="no-such-model")),
        (openai.BadRequestError, dict(model=model, temperature=-1)),
        (openai.BadRequestError, dict(model=model, max_tokens=10**7)),
        (openai.BadRequestError, dict(model=model, presence_penalty=3.0)),
    ]
    for exc, kw in expect:
        try:
            client.chat.completions.create(messages=MESSAGES, **kw)
        except exc as e:
            assert e.body and "message" in e.body, e.body
        else:
            raise AssertionError(f"{kw}: no {exc.__name__}")
    wrong = openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0)
    try:
        wrong.models.list()
    except openai.AuthenticationError:
        pass
    else:
        raise AssertionError("a wrong API key was accepted")


print(f"openai {openai.__version__}: {len(checks)} checks passed")
