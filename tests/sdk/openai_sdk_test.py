#!/usr/bin/env python3
"""spotd through the official `openai` Python SDK, as a user following the README would.

Usage: python3 tests/sdk/openai_sdk_test.py URL API_KEY [default-wait]

With `default-wait` the daemon runs with `deployments.default_wait_seconds` set, and the
checks are those of a tool that cannot set headers (LiteLLM, LangChain): a plain call to
a cold model answers the completion.

URL is the daemon's base URL (http://127.0.0.1:PORT, without /v1). The daemon must run
in sandbox mode with fast timings (provision and model load of a second or two), so the
cold model is ready within the retry budget. Prints one line per check and
`N passed, 0 failed` at the end; exits non-zero on any failure.
"""

import sys
import time
import traceback

try:
    from openai import OpenAI
except ImportError:
    print("the 'openai' package is not installed: pip install openai", file=sys.stderr)
    sys.exit(2)

HOSTED = ["gpt-4o-mini", "llama-3.1-8b-instruct-hosted"]
COLD = "meta-llama/Llama-3.1-8B-Instruct"
# Sleep at most this long per 202, whatever Retry-After says: the sandbox is fast,
# and a real deployment is polled again soon enough.
MAX_SLEEP_SECONDS = 10.0
RETRY_BUDGET_SECONDS = 90.0


class CheckFailed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def extra(obj):
    """The non-OpenAI fields of an SDK object (spotd's `availability`, `pricing`, ...)."""
    d = obj.to_dict()
    d.update(obj.model_extra or {})
    return d


def create_with_retry(client, max_sleep=MAX_SLEEP_SECONDS, budget=RETRY_BUDGET_SECONDS, **kwargs):
    """The README's retry wrapper: a cold model answers 202 + Retry-After while it deploys.

    The SDK treats 202 as success, so use the raw response to see the status and the
    header; sleep Retry-After (capped), retry until 200. Returns (completion, attempts).
    """
    deadline = time.monotonic() + budget
    attempts = 0
    while True:
        attempts += 1
        raw = client.chat.completions.with_raw_response.create(**kwargs)
        if raw.status_code != 202:
            return raw.parse(), attempts
        body = raw.http_response.json()
        check(body.get("status") == "deploying", f"202 body is not 'deploying': {body}")
        check(body.get("type") == "model_deploying", f"202 body type: {body}")
        retry_after = raw.headers.get("retry-after")
        check(retry_after is not None, "202 without a Retry-After header")
        wait = min(float(retry_after), max_sleep)
        if time.monotonic() + wait > deadline:
            raise CheckFailed(f"model {kwargs.get('model')} not ready after {budget} s ({attempts} attempts)")
        time.sleep(wait)


def runner():
    results = []

    def run(name, fn):
        try:
            fn()
            results.append((name, None))
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
            results.append((name, e))
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            if not isinstance(e, CheckFailed):
                traceback.print_exc()

    return results, run


def summary(results):
    failed = sum(1 for _, e in results if e is not None)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def default_wait(url, key):
    """The daemon has deployments.default_wait_seconds: no header, no retry loop."""
    # As a tool would build it: no extra headers, a timeout longer than the wait.
    client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
    results, run = runner()

    def plain_call_to_cold_model():
        check(extra(client.models.retrieve(COLD)).get("availability") == "cold", "not cold at first")
        t0 = time.monotonic()
        r = client.chat.completions.create(
            model=COLD, messages=[{"role": "user", "content": "hello from a tool without headers"}]
        )
        check(r.object == "chat.completion", f"object: {r.object} ({r})")
        check(r.choices and r.choices[0].message.content, f"no choices: {r}")
        print(f"     (default_wait_seconds held the request {time.monotonic() - t0:.1f} s)")

    def streamed_call_to_cold_model():
        stream = client.chat.completions.create(
            model="mistralai/Mistral-Small-24B-Instruct-2501",
            messages=[{"role": "user", "content": "stream once you are ready"}],
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        check(text.strip(), "the stream was empty")

    def langchain_openai():
        from langchain_openai import ChatOpenAI

        llm = ChatOpenAI(
            base_url=url + "/v1", api_key=key, model="Qwen/Qwen2.5-32B-Instruct",
            max_retries=0, timeout=120,
        )
        m = llm.invoke("hello from LangChain")
        check(isinstance(m.content, str) and m.content.strip(), f"empty LangChain answer: {m}")

    run("default_wait_seconds: plain create on a cold model answers 200 with choices", plain_call_to_cold_model)
    run("default_wait_seconds: stream=True on a cold model streams once ready", streamed_call_to_cold_model)
    try:
        import langchain_openai as _  # noqa: F401
    except ImportError:
        results.append(("LangChain ChatOpenAI", ImportError("pip install langchain-openai")))
        print("FAIL LangChain ChatOpenAI: langchain-openai is not installed (pip install langchain-openai)")
    else:
        run("default_wait_seconds: LangChain ChatOpenAI.invoke on a cold model", langchain_openai)
    return summary(results)


def main():
    if len(sys.argv) not in (3, 4) or (len(sys.argv) == 4 and sys.argv[3] != "default-wait"):
        print(__doc__, file=sys.stderr)
        return 2
    url, key = sys.argv[1].rstrip("/"), sys.argv[2]
    if len(sys.argv) == 4:
        return default_wait(url, key)
    # max_retries=0: failures must surface here, not be hidden by SDK retries.
    client = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
    results, run = runner()

    def models_list():
        models = {m.id: extra(m) for m in client.models.list()}
        for h in HOSTED:
            check(h in models, f"hosted model {h} missing from /v1/models: {sorted(models)}")
            check(models[h].get("availability") == "instant", f"{h}: {models[h]}")
            check(models[h]["pricing"]["type"] == "per_token", f"{h} pricing: {models[h]}")
        check(COLD in models, f"cold model {COLD} missing: {sorted(models)}")
        check(models[COLD].get("availability") == "cold", f"{COLD}: {models[COLD]}")
        check(models[COLD]["pricing"]["type"] == "gpu_time", f"{COLD} pricing: {models[COLD]}")

    def chat_plain():
        r = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Say hello to the spot market"}],
            max_tokens=20,
        )
        check(r.object == "chat.completion", f"object: {r.object}")
        check(len(r.choices) == 1, f"choices: {r.choices}")
        content = r.choices[0].message.content
        check(isinstance(content, str) and content.strip(), f"empty content: {r}")
        check(r.choices[0].message.role == "assistant", f"role: {r.choices[0].message.role}")
        u = r.usage
        check(u is not None, "no usage")
        check(u.prompt_tokens > 0 and u.completion_tokens > 0, f"usage: {u}")
        check(u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage total: {u}")
        check(u.completion_tokens <= 20, f"max_tokens not honoured: {u}")

    def chat_stream():
        stream = client.chat.completions.create(
            model="llama-3.1-8b-instruct-hosted",
            messages=[{"role": "user", "content": "Stream me a sentence"}],
            stream=True,
        )
        parts, chunks = [], 0
        for chunk in stream:
            chunks += 1
            # spotd asks the upstream for usage to bill; a caller who did not ask
            # must not see that extra chunk.
            check(getattr(chunk, "usage", None) is None, f"unrequested usage chunk: {chunk}")
            for c in chunk.choices:
                if c.delta and c.delta.content:
                    parts.append(c.delta.content)
        text = "".join(parts)
        check(chunks > 1, f"only {chunks} chunk(s): not a stream")
        check(text.strip(), "the streamed deltas joined to an empty string")

    def chat_stream_usage():
        # A client that asks for usage gets the final usage chunk (choices empty).
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "count my tokens"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = [c.usage for c in stream if c.usage is not None]
        check(len(usage) == 1, f"expected one usage chunk, got {len(usage)}")
        check(usage[0].completion_tokens > 0, f"usage: {usage[0]}")

    def cold_with_retry():
        # The first call must see the cold start (202), then the wrapper waits it out.
        first = client.chat.completions.with_raw_response.create(
            model=COLD, messages=[{"role": "user", "content": "are you warm yet"}]
        )
        check(first.status_code == 202, f"cold model answered {first.status_code}, expected 202")
        r, attempts = create_with_retry(
            client, model=COLD, messages=[{"role": "user", "content": "hello from the SDK"}]
        )
        check(r.object == "chat.completion", f"object after retries: {r}")
        check(r.choices[0].message.content, f"empty content after {attempts} attempts")
        m = extra(client.models.retrieve(COLD))
        check(m.get("availability") == "instant", f"{COLD} ready but listed as {m.get('availability')}")

    def prefer_wait():
        # A different cold model, so this call really has to wait for a deployment.
        model = "mistralai/Mistral-Small-24B-Instruct-2501"
        t0 = time.monotonic()
        r = client.chat.completions.with_raw_response.create(
            model=model,
            messages=[{"role": "user", "content": "wait for me"}],
            extra_headers={"Prefer": "wait=60"},
        )
        check(r.status_code == 200, f"Prefer: wait=60 answered {r.status_code}: {r.http_response.text}")
        c = r.parse()
        check(c.choices[0].message.content, f"empty completion: {c}")
        print(f"     (Prefer: wait held the request {time.monotonic() - t0:.1f} s)")

    def stream_to_cold_model_raises():
        # Streaming to a model that is not ready must raise, not yield nothing: spotd
        # answers 503 + Retry-After (code model_deploying) instead of the 202 body.
        import openai

        model = "Qwen/Qwen2.5-32B-Instruct"
        try:
            stream = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "stream me"}], stream=True
            )
            chunks = list(stream)
        except openai.APIStatusError as e:
            check(e.status_code == 503, f"status: {e.status_code}")
            check(e.code == "model_deploying", f"code: {e.code}")
            check(e.response.headers.get("retry-after"), "no Retry-After")
            return
        raise CheckFailed(f"a stream to a cold model did not raise ({len(chunks)} chunks)")

    def unknown_model():
        import openai

        try:
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        except openai.NotFoundError as e:
            check(e.code == "model_not_found", f"code: {e.code}")
            return
        raise CheckFailed("an unknown model did not raise NotFoundError")

    run("models.list(): hosted instant, cold model cold", models_list)
    run("chat.completions.create (plain, hosted)", chat_plain)
    run("chat.completions.create (stream=True, hosted)", chat_stream)
    run("stream_options.include_usage gives one usage chunk", chat_stream_usage)
    run("cold model: 202 + Retry-After, retry wrapper until 200", cold_with_retry)
    run("Prefer: wait=60 via extra_headers answers the completion", prefer_wait)
    run("stream=True to a cold model raises APIStatusError 503 model_deploying", stream_to_cold_model_raises)
    run("unknown model raises NotFoundError model_not_found", unknown_model)

    return summary(results)


if __name__ == "__main__":
    sys.exit(main())
