"""The official `openai` Python package against a running tollgate, unchanged.

Run by tests/openai_sdk.rs with TOLLGATE_BASE_URL and the keys it created in the environment.
Prints one line per check and a closing "N passed, N failed" line; exits non-zero on failure.
"""

import os
import sys
import traceback

import openai
from openai import OpenAI

BASE = os.environ["TOLLGATE_BASE_URL"] + "/v1"
FREE_KEY = os.environ["FREE_KEY"]
VERIFIED_KEY = os.environ["VERIFIED_KEY"]
BROKE_KEY = os.environ["BROKE_KEY"]
MGMT_KEY = os.environ["MGMT_KEY"]
BILLING_URL = os.environ["BILLING_URL"]
UPSTREAM_MODEL = os.environ.get("UPSTREAM_MODEL")
FREE = "tollgate/demo-chat"
PRO = "tollgate/demo-chat-pro"
MESSAGES = [{"role": "user", "content": "Hello from the SDK"}]

checks = []


def check(fn):
    checks.append(fn)
    return fn


def client(key, **kw):
    return OpenAI(base_url=BASE, api_key=key, max_retries=0, **kw)


def expect(exc_type, fn, code=None, contains=None):
    try:
        fn()
    except exc_type as e:
        if code is not None:
            assert e.code == code, f"code {e.code!r} != {code!r}"
        if contains is not None:
            assert contains in e.message, f"{contains!r} not in {e.message!r}"
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


@check
def non_stream_completion():
    raw = client(VERIFIED_KEY).chat.completions.with_raw_response.create(model=PRO, messages=MESSAGES)
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.model == PRO
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content.startswith("Demo reply to")
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    credits = r.model_extra["meta"]["usage"]["credits_used"]
    assert credits == r.usage.prompt_tokens * 20 + r.usage.completion_tokens * 60, credits
    assert int(raw.headers["x-tollgate-credits-used"]) == credits
    assert len(raw.headers["x-inference-id"]) == 21


@check
def stream_with_usage():
    stream = client(VERIFIED_KEY).chat.completions.create(
        model=PRO, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Demo reply to"), text
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None and last.usage.completion_tokens > 0
    meta = last.model_extra["meta"]["usage"]
    assert meta["credits_used"] == last.usage.prompt_tokens * 20 + last.usage.completion_tokens * 60


@check
def stream_without_usage_still_gets_meta():
    chunks = list(client(FREE_KEY).chat.completions.create(model=FREE, messages=MESSAGES, stream=True))
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].model_extra["meta"]["usage"] == {"credits_used": 0, "usd_spent": 0}


@check
def models_list():
    ids = [m.id for m in client(FREE_KEY).models.list()]
    assert FREE in ids and PRO in ids, ids


@check
def bad_request_error():
    expect(
        openai.BadRequestError,
        lambda: client(FREE_KEY).chat.completions.create(model=FREE, messages="not a list"),
        code="body_validation",
        contains="Body validation error",
    )


@check
def authentication_error():
    expect(
        openai.AuthenticationError,
        lambda: client("0" * 32).chat.completions.create(model=FREE, messages=MESSAGES),
        code="invalid_api_key",
        contains="This request requires a valid API key.",
    )


@check
def permission_denied_for_free_tier():
    expect(
        openai.PermissionDeniedError,
        lambda: client(FREE_KEY).chat.completions.create(model=PRO, messages=MESSAGES),
        code="tier_model_forbidden",
        contains="Add a billing method",
    )


@check
def permission_denied_when_credits_are_exhausted():
    e = expect(
        openai.PermissionDeniedError,
        lambda: client(BROKE_KEY).chat.completions.create(model=PRO, messages=MESSAGES),
        code="credits_exhausted",
    )
    # The SDK prefixes its message with the status; the error body carries ours exactly.
    assert e.message.endswith(e.body["message"])
    assert e.body["message"] == (
        "You have exhausted the available [plan.rule:api_token] resource limit. Update your payment "
        f"method to continue using the service. For more information please visit {BILLING_URL}"
    ), e.body


@check
def permission_denied_for_management_keys():
    expect(
        openai.PermissionDeniedError,
        lambda: client(MGMT_KEY).chat.completions.create(model=FREE, messages=MESSAGES),
        code="scope_forbidden",
    )


@check
def not_found_error():
    expect(
        openai.NotFoundError,
        lambda: client(FREE_KEY).chat.completions.create(model="no/such-model", messages=MESSAGES),
        code="model_not_found",
        contains="no/such-model",
    )


@check
def rate_limit_error_on_the_free_tier():
    c = client(FREE_KEY)
    e = None
    for _ in range(20):
        try:
            c.chat.completions.create(model=FREE, messages=MESSAGES)
        except openai.RateLimitError as err:
            e = err
            break
    assert e is not None, "the hourly limit never applied"
    assert e.code == "free_tier_limit"
    assert e.body["message"].startswith("Free-tier limit: You've reached your free limit for the hour."), e.body
    assert int(e.response.headers["retry-after"]) > 0


@check
def server_errors_from_the_upstream():
    if not UPSTREAM_MODEL:
        return
    expect(
        openai.InternalServerError,
        lambda: client(VERIFIED_KEY, timeout=30).chat.completions.create(model=UPSTREAM_MODEL, messages=MESSAGES),
        code="generation_timeout",
    )


passed = failed = 0
for fn in checks:
    try:
        fn()
        passed += 1
        print(f"ok {fn.__name__}")
    except Exception:
        failed += 1
        print(f"FAILED {fn.__name__}")
        traceback.print_exc()
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
