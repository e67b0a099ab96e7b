"""/v1/chat/completions over real HTTP on 127.0.0.1 (the tiny random dialogue model of the session
app): the stream delivers its first chunk before the reply is done, and a 3-turn conversation
works with streaming, through httpx and through the official `openai` client."""

from __future__ import annotations

import json
import time

import httpx

MAX_TOKENS = 24          # the fixture's limits.max_new_tokens


def sse_events(response: httpx.Response):
    """(arrival time, payload) for every `data:` line of a server-sent event stream."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield time.perf_counter(), line[len("data: "):]


def test_stream_delivers_its_first_chunk_before_the_reply_is_done(app_url):
    body = {"messages": [{"role": "user", "content": "今天天气怎么样"}], "max_tokens": MAX_TOKENS,
            "temperature": 1.0, "top_k": 50, "seed": 3, "stream": True}
    # One warm-up call: the first request through a fresh replica pays one-off costs.
    httpx.post(f"{app_url}/v1/chat/completions", json={**body, "stream": False}, timeout=60).raise_for_status()
    with httpx.stream("POST", f"{app_url}/v1/chat/completions", json=body, timeout=60) as response:
        t0 = time.perf_counter()
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    assert events[-1][1] == "[DONE]"
    chunks = [(t, json.loads(p)) for t, p in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for _, c in chunks)
    assert chunks[0][1]["choices"][0]["delta"]["role"] == "assistant"
    content = [(t, c["choices"][0]["delta"]["content"]) for t, c in chunks
               if c["choices"][0]["delta"].get("content")]
    finish = [c["choices"][0]["finish_reason"] for _, c in chunks if c["choices"][0]["finish_reason"]]
    assert finish in (["length"], ["stop"])
    assert len(content) >= 3, content                         # token by token, not one lump at the end
    t_first, t_done = content[0][0] - t0, events[-1][0] - t0
    spread = content[-1][0] - content[0][0]
    print(f"\nstream: {len(content)} content chunks, first at {1000 * t_first:.1f} ms, "
          f"last at {1000 * (content[-1][0] - t0):.1f} ms, [DONE] at {1000 * t_done:.1f} ms")
    # The first piece of text is on the client while the rest is still being generated.
    assert t_first < t_done
    assert spread > 0.005 and t_first < 0.8 * t_done, (t_first, t_done, spread)


def chat_stream(client: httpx.Client, messages: list[dict], **options) -> tuple[str, str]:
    body = {"messages": messages, "max_tokens": MAX_TOKENS, "stream": True, **options}
    text, finish = "", None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for _, payload in sse_events(response):
            if payload == "[DONE]":
                break
            choice = json.loads(payload)["choices"][0]
            text += choice["delta"].get("content", "")
            finish = choice["finish_reason"] or finish
        else:
            raise AssertionError("stream ended without [DONE]")
    return text, finish


def test_three_turn_conversation_streams_and_matches_the_full_reply(client):
    """Greedy decoding: each streamed reply, put together, equals the non-streamed reply to the same
    history, and the history (user and assistant turns) reaches the model."""
    messages = [{"role": "system", "content": "你是客服"}]
    prompt_tokens = []
    for user in ("你好", "我的快递还没到", "谢谢"):
        messages.append({"role": "user", "content": user})
        streamed, finish = chat_stream(client, messages, temperature=0)
        full = client.post("/v1/chat/completions",
                           json={"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0}).json()
        assert streamed == full["choices"][0]["message"]["content"]
        assert finish == full["choices"][0]["finish_reason"]
        prompt_tokens.append(full["usage"]["prompt_tokens"])
        messages.append({"role": "assistant", "content": streamed})
    assert prompt_tokens[0] < prompt_tokens[1] < prompt_tokens[2]


def test_the_official_openai_client_holds_a_streaming_conversation(app_url):
    from openai import OpenAI

    client = OpenAI(base_url=f"{app_url}/v1", api_key="not-needed", timeout=60, max_retries=0)
    messages = []
    for user in ("你好", "明天会下雨吗", "好的，谢谢"):
        messages.append({"role": "user", "content": user})
        stream = client.chat.completions.create(model="chat", messages=messages, max_tokens=MAX_TOKENS,
                                                temperature=0.8, top_p=0.95, seed=11, stream=True)
        parts, finish = [], None
        for chunk in stream:
            choice = chunk.choices[0]
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        reply = "".join(parts)
        assert finish in ("stop", "length") and chunk.object == "chat.completion.chunk"
        assert reply.strip() or finish == "stop"
        messages.append({"role": "assistant", "content": reply})
    # Non-streaming too (the app allows 6 messages per request: keep the last two turns).
    done = client.chat.completions.create(model="chat", messages=messages[-4:] + [{"role": "user", "content": "再见"}],
                                          max_tokens=8, temperature=0)
    assert done.object == "chat.completion" and done.choices[0].message.role == "assistant"
    assert done.usage.completion_tokens <= 8 and done.choices[0].finish_reason in ("stop", "length")
    assert [m.capability for m in client.models.list().data if m.capability == "chat"] == ["chat"]
