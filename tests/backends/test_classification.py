"""What each backend's output means: one table of (backend, output) -> error class.

The outputs are what the REAL programs printed (Claude Code 2.1.330, Codex 0.169.0, Gemini CLI 0.61.0, Aider
0.86.2, run against tests/integration/fake_provider.py in each mode; trimmed to the lines that matter, texts
kept byte for byte), plus the shapes the reference documents and the crash cases whose rule is stated in
fleetd.backends.parsers.silent_exit. tests/integration/test_real_clis.py checks the same classes live.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fleetd.backends.parsers import aider, classify, claude_code, codex, gemini, openai_compat
from fleetd.records.result import ERROR_CLASSES, ParsedOutput

NOW = datetime(2026, 11, 30, 3, 40, tzinfo=UTC)
TZ = ZoneInfo("Europe/Berlin")


@dataclass(frozen=True)
class Out:
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = 1


PARSERS: dict[str, Callable[[Out], ParsedOutput]] = {
    "claude": lambda o: claude_code.parse_stream_json(o.stdout, o.stderr, o.exit_code, NOW, TZ),
    "codex": lambda o: codex.parse_exec_jsonl(o.stdout, o.stderr, o.exit_code, NOW, TZ),
    "gemini": lambda o: gemini.parse_json(o.stdout, o.stderr, o.exit_code, NOW, TZ),
    "aider": lambda o: aider.parse_output(o.stdout, o.stderr, o.exit_code, None, NOW, TZ),
}


# --- Claude Code: stream-json, CLAUDE_CODE_MAX_RETRIES=0 ------------------------------------------------------------

CC_INIT = {"type": "system", "subtype": "init", "session_id": "s-1", "model": "claude-opus-5-5"}


def claude(text: str, error: str, status: int | None, api_type: str | None) -> Out:
    """The two lines 2.1.330 ends a failed turn with: a synthetic assistant message and the result."""
    assistant = {
        "type": "assistant",
        "message": {"model": "<synthetic>", "role": "assistant", "content": [{"type": "text", "text": text}]},
        "error": error,
        "is_api_error_message": True,
        "api_error_status": status,
        "api_error_type": api_type,
    }
    result = {
        "type": "result",
        "subtype": "success",
        "is_error": True,
        "api_error_status": status,
        "api_error_type": api_type,
        "terminal_reason": "api_error",
        "result": text,
        "session_id": "s-1",
    }
    return Out("\n".join(json.dumps(x, ensure_ascii=False) for x in (CC_INIT, assistant, result)) + "\n")


CC_529 = claude(
    "API Error: 529 Overloaded (fake). This is a server-side issue, usually temporary — try again in a moment. "
    "If it persists, check your inference gateway (127.0.0.1:43833).",
    "server_error",
    529,
    "overloaded_error",
)
CC_500 = claude(
    "API Error: 500 Internal server error (fake). This is a server-side issue, usually temporary — try again in a "
    "moment. If it persists, check your inference gateway (127.0.0.1:41393).",
    "server_error",
    500,
    "api_error",
)
CC_REFUSED = claude(
    "API Error: Connection refused — a firewall or proxy may be blocking it (ECONNREFUSED)", "server_error", None, None
)
CC_CREDIT = claude("Credit balance is too low", "billing_error", 400, "invalid_request_error")
CC_BAD_KEY = claude("Invalid API key · Fix external API key", "authentication_failed", 401, "authentication_error")
CC_NOT_LOGGED_IN = claude("Not logged in · Please run /login", "authentication_failed", None, None)
CC_BAD_REQUEST = claude(
    "API Error: 400 messages: at least one message is required (fake)", "unknown", 400, "invalid_request_error"
)
CC_NO_MODEL = claude(
    "There's an issue with the selected model (claude-opus-5-5). It may not exist or you may not have access to it. "
    "Run --model to pick a different model.",
    "model_not_found",
    404,
    "not_found_error",
)
CC_429 = claude(
    "API Error: Request rejected (429) · This request would exceed your organization's rate limit of 50 requests "
    "per minute (fake).",
    "rate_limit",
    429,
    "rate_limit_error",
)
CC_INIT_ONLY = Out(json.dumps(CC_INIT) + "\n", "", 1)

# --- Codex: exec --json, custom provider with stream_max_retries = 0 -----------------------------------------------


def codex_failed(message: str) -> Out:
    lines = [
        {"type": "thread.started", "thread_id": "01a20060-daf0-70d3-8148-a2ca2696027d"},
        {"type": "turn.started"},
        {"type": "error", "message": message},
        {"type": "turn.failed", "error": {"message": message}},
    ]
    return Out("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", CODEX_STDERR, 1)


CODEX_STDERR = "Reading additional input from stdin...\n"
CODEX_503 = codex_failed(
    "unexpected status 503 Service Unavailable: The engine is currently overloaded, please try again later. (fake), "
    "url: http://127.0.0.1:32823/v1/responses"
)
CODEX_500 = codex_failed("We\u2019re currently experiencing high demand, which may cause temporary errors.")
CODEX_429 = codex_failed("exceeded retry limit, last status: 429 Too Many Requests")
CODEX_QUOTA = codex_failed("Quota exceeded. Check your plan and billing details.")
CODEX_BAD_KEY = codex_failed(
    "unexpected status 401 Unauthorized: Incorrect API key provided: sk-fake***6789. You can find your API key at "
    "https://platform.openai.com/account/api-keys. (fake), url: http://127.0.0.1:34881/v1/responses"
)
CODEX_NO_KEY = codex_failed("Missing environment variable: `FAKE_PROVIDER_API_KEY`.")
CODEX_BAD_REQUEST = codex_failed(
    '{"error": {"message": "Invalid value for \'input\': expected a list of items. (fake)", '
    '"type": "invalid_request_error", "param": null, "code": null}}'
)
CODEX_NO_MODEL = codex_failed("The model `gpt-5.5` does not exist or you do not have access to it. (fake)")
# Connection refused: Codex reconnects without end; fleetd ends it (SIGKILL here) at the first such line.
CODEX_REFUSED = Out(
    '{"type":"thread.started","thread_id":"01a22a93-6b73-71c1-818a-96519a6509a1"}\n{"type":"turn.started"}\n'
    '{"type":"error","message":"Reconnecting... waiting for network (Connection failed: error sending request)"}\n',
    CODEX_STDERR,
    -9,
)
CODEX_SILENT = Out('{"type":"thread.started","thread_id":"t"}\n{"type":"turn.started"}\n', CODEX_STDERR, 1)

# --- Gemini CLI: -o json -m MODEL, general.maxAttempts=1 -----------------------------------------------------------

GEMINI_NOISE = (
    "Warning: 256-color support not detected. Using a terminal with at least 256-color support is recommended for "
    "a better visual experience.\nRipgrep is not available. Falling back to GrepTool.\n"
    "[STARTUP] Phase 'cleanup_ops' was started but never ended. Skipping metrics.\n"
)


def gemini_failed(dump: str, message: str, code: int, exit_code: int) -> Out:
    report = json.dumps({"session_id": "eca7aee4", "error": {"type": "Error", "message": message, "code": code}})
    return Out("", GEMINI_NOISE + dump + json.dumps(json.loads(report), indent=2) + "\n", exit_code)


GEMINI_503 = gemini_failed(
    "Attempt 1 failed: The model is overloaded. Please try again later. (fake). Max attempts reached\n"
    "Error when talking to Gemini API Full report available at: /tmp/gemini-client-error-Turn.run-sendMessageStream"
    ".json RetryableQuotaError: The model is overloaded. Please try again later. (fake)\n"
    "  cause: {\n    code: 503,\n    message: 'The model is overloaded. Please try again later. (fake)',\n"
    "    details: []\n  },\n  retryDelayMs: undefined,\n  status: 503\n}\n",
    "The model is overloaded. Please try again later. (fake)",
    503,
    247,
)
GEMINI_500_BODY = (
    '{"error":{"code":500,"message":"An internal error has occurred. Please retry or report in '
    'https://developers.generativeai.google/guide/troubleshooting (fake)","status":"INTERNAL","details":[]}}'
)
GEMINI_500 = gemini_failed(f"Attempt 1 failed: {GEMINI_500_BODY}. Max attempts reached\n", GEMINI_500_BODY, 500, 244)
GEMINI_PER_MINUTE = gemini_failed(
    "Attempt 1 failed: Resource has been exhausted (e.g. check quota). (fake)\n",
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n* Quota exceeded for metric: "
    "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 2\nPlease retry in 1s. (fake)\n"
    "Suggested retry after 1s.",
    429,
    173,
)
GEMINI_DAILY = gemini_failed(
    "Error when talking to Gemini API Full report available at: /tmp/x.json TerminalQuotaError: You have exhausted "
    "your daily quota on this model.\n  cause: {\n    code: 429,\n",
    "You have exhausted your daily quota on this model.",
    429,
    173,
)
GEMINI_LIMIT_0 = gemini_failed(
    "",
    "You exceeded your current quota, please check your plan and billing details.\n* Quota exceeded for metric: "
    "generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: gemini-2.5-pro",
    429,
    173,
)
GEMINI_CREDITS = gemini_failed(
    "TerminalQuotaError: Your prepayment credits are depleted.\n  reason: 'INSUFFICIENT_G1_CREDITS_BALANCE',\n",
    "Your prepayment credits are depleted. Please go to AI Studio to manage your project and billing.",
    429,
    173,
)
GEMINI_BILLING_DISABLED = gemini_failed(
    "",
    '{"error":{"code":403,"message":"This API method requires billing to be enabled. Please enable billing on '
    'project #123 then retry.","status":"PERMISSION_DENIED","details":[{"reason":"BILLING_DISABLED"}]}}',
    403,
    403 % 256,
)
GEMINI_BAD_KEY_BODY = (
    '{"error":{"code":400,"message":"API key not valid. Please pass a valid API key. (fake)","status":'
    '"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID",'
    '"domain":"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}'
)
GEMINI_BAD_KEY = gemini_failed(
    f"Error when talking to Gemini API Full report available at: /tmp/x.json _ApiError: {GEMINI_BAD_KEY_BODY}\n"
    "  status: 400\n}\n",
    GEMINI_BAD_KEY_BODY,
    400,
    144,
)
GEMINI_NO_KEY = gemini_failed(
    "",
    "When using Gemini API, you must specify the GEMINI_API_KEY environment variable.\n"
    "Update your environment and try again (no reload needed if using .env)!",
    41,
    41,
)
GEMINI_BAD_REQUEST_BODY = (
    '{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \\"bogus\\": Cannot find field. '
    '(fake)","status":"INVALID_ARGUMENT","details":[]}}'
)
GEMINI_BAD_REQUEST = gemini_failed("", GEMINI_BAD_REQUEST_BODY, 400, 144)
GEMINI_NO_MODEL = gemini_failed(
    "Error when talking to Gemini API Full report available at: /tmp/x.json ModelNotFoundError: "
    "models/gemini-2.5-flash is not found for API version v1beta (fake)\n  code: 404\n}\n",
    "models/gemini-2.5-flash is not found for API version v1beta, or is not supported for generateContent. Call "
    "ListModels to see the list of available models and their supported methods. (fake)",
    1,
    1,
)
GEMINI_REFUSED = gemini_failed(
    "Error when talking to Gemini API Full report available at: /tmp/x.json Error: exception TypeError: fetch "
    "failed sending request\n",
    "exception TypeError: fetch failed sending request",
    1,
    1,
)
GEMINI_NOISE_ONLY = Out("", GEMINI_NOISE, 1)

# --- Aider: --message, exits 0 after giving up -----------------------------------------------------------------------

AIDER_BANNER = (
    "Analytics have been permanently disabled.\n\nAider v0.86.2\nModel: openai/fake with whole edit format\n"
    "Git repo: none\nRepo-map: disabled\n\n"
)
AIDER_STDERR = "Warning: Input is not a terminal (fd=0).\n"


def aider_round(error: str, explanation: str | None = None, retry: str | None = "0.2") -> Out:
    """One round of Aider's error report as printed (wrapped at 80 columns), exit 0."""
    text = AIDER_BANNER + error + "\n" + (f"{explanation}\n" if explanation else "")
    text += f"Retrying in {retry} seconds...\n" if retry else ""
    return Out(text, AIDER_STDERR, 0)


AIDER_503 = aider_round(
    "litellm.ServiceUnavailableError: ServiceUnavailableError: OpenAIException - The\n"
    "engine is currently overloaded, please try again later. (fake)",
    "The API provider's servers are down or overloaded.",
)
AIDER_500 = aider_round(
    "litellm.InternalServerError: InternalServerError: OpenAIException - The server\n"
    "had an error while processing your request. Sorry about that! (fake)",
    "The API provider's servers are down or overloaded.",
)
AIDER_REFUSED = aider_round(
    "litellm.InternalServerError: InternalServerError: OpenAIException - Connection\nerror.",
    "The API provider's servers are down or overloaded.",
)
AIDER_429 = aider_round(
    "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for\n"
    "requests (fake). Please try again in 1s.",
    "The API provider has rate limited you. Try again later or check your quotas.",
)
AIDER_QUOTA = aider_round(
    "litellm.RateLimitError: RateLimitError: OpenAIException - You exceeded your\n"
    "current quota, please check your plan and billing details. For more information\n"
    "on this error, read the docs:\nhttps://platform.openai.com/docs/guides/error-codes/api-errors. (fake)",
    "The API provider has rate limited you. Try again later or check your quotas.",
)
AIDER_BAD_KEY = aider_round(
    "litellm.AuthenticationError: AuthenticationError: OpenAIException - Incorrect\n"
    "API key provided: sk-fake***6789. You can find your API key at\n"
    "https://platform.openai.com/account/api-keys. (fake)",
    "The API provider is not able to authenticate you. Check your API key.\n"
    "https://platform.openai.com/account/api-keys",
    retry=None,
)
AIDER_BAD_REQUEST = aider_round(
    "litellm.BadRequestError: OpenAIException - Invalid value for 'input': expected a\nlist of items. (fake)",
    retry=None,
)
AIDER_NO_MODEL = aider_round(
    "litellm.NotFoundError: OpenAIException - The model `fake` does not exist or you\ndo not have access to it. (fake)",
    retry=None,
)
AIDER_GEMINI_BAD_KEY = aider_round(
    'litellm.BadRequestError: GeminiException BadRequestError - {"error": {"code": 400,\n'
    '"message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}}',
    retry=None,
)
AIDER_BANNER_ONLY_CRASH = Out(AIDER_BANNER, AIDER_STDERR, 1)

CASES: list[tuple[str, str, Out, str]] = [
    # backend, what happened, output, class
    ("claude", "529 overloaded", CC_529, "transient"),
    ("claude", "500", CC_500, "transient"),
    ("claude", "connection refused", CC_REFUSED, "transient"),
    ("claude", "400 credit balance too low", CC_CREDIT, "quota"),
    ("claude", "401 invalid x-api-key", CC_BAD_KEY, "auth"),
    ("claude", "no credentials", CC_NOT_LOGGED_IN, "auth"),
    ("claude", "400 bad request", CC_BAD_REQUEST, "contract"),
    ("claude", "404 unknown model", CC_NO_MODEL, "contract"),
    ("claude", "429", CC_429, "rate_limited"),
    ("claude", "exit 1 after init, nothing else", CC_INIT_ONLY, "transient"),
    ("claude", "exit 1, no output", Out("", "", 1), "transient"),
    ("claude", "killed by a signal, no output", Out("", "", -9), "transient"),
    ("claude", "exit 1, unreadable output", Out("\x00\x01 garbage \x1b[31m", "", 1), "unknown"),
    ("codex", "503 overloaded", CODEX_503, "transient"),
    ("codex", "500", CODEX_500, "transient"),
    ("codex", "connection refused (ended by fleetd)", CODEX_REFUSED, "transient"),
    ("codex", "429", CODEX_429, "rate_limited"),
    ("codex", "429 insufficient_quota", CODEX_QUOTA, "quota"),
    ("codex", "401 incorrect key", CODEX_BAD_KEY, "auth"),
    ("codex", "provider key variable missing", CODEX_NO_KEY, "auth"),
    ("codex", "400 bad request", CODEX_BAD_REQUEST, "contract"),
    ("codex", "404 unknown model", CODEX_NO_MODEL, "contract"),
    ("codex", "exit 1 after turn.started, stderr only its usual line", CODEX_SILENT, "transient"),
    ("codex", "exit 1, only its usual stderr", Out("", CODEX_STDERR, 1), "transient"),
    ("codex", "bad arguments", Out("", "error: unexpected argument '--bogus' found\n", 2), "contract"),
    ("gemini", "503 overloaded (the CLI says RetryableQuotaError)", GEMINI_503, "transient"),
    ("gemini", "500", GEMINI_500, "transient"),
    ("gemini", "fetch failed", GEMINI_REFUSED, "transient"),
    ("gemini", "429 per minute ('… billing details' notwithstanding)", GEMINI_PER_MINUTE, "rate_limited"),
    ("gemini", "429 per day", GEMINI_DAILY, "rate_limited"),
    ("gemini", "429 limit: 0 (no free tier for the model)", GEMINI_LIMIT_0, "quota"),
    ("gemini", "429 prepayment credits depleted", GEMINI_CREDITS, "quota"),
    ("gemini", "403 billing disabled (reference shape)", GEMINI_BILLING_DISABLED, "quota"),
    ("gemini", "400 API key not valid", GEMINI_BAD_KEY, "auth"),
    ("gemini", "no key (exit 41)", GEMINI_NO_KEY, "auth"),
    ("gemini", "400 bad request", GEMINI_BAD_REQUEST, "contract"),
    ("gemini", "404 unknown model", GEMINI_NO_MODEL, "contract"),
    ("gemini", "exit 1, only start-up noise", GEMINI_NOISE_ONLY, "transient"),
    ("aider", "503 overloaded", AIDER_503, "transient"),
    ("aider", "500", AIDER_500, "transient"),
    ("aider", "connection refused", AIDER_REFUSED, "transient"),
    ("aider", "429", AIDER_429, "rate_limited"),
    ("aider", "429 insufficient_quota (litellm says RateLimitError)", AIDER_QUOTA, "quota"),
    ("aider", "401 incorrect key", AIDER_BAD_KEY, "auth"),
    ("aider", "Gemini's 400 API key not valid (litellm says BadRequestError)", AIDER_GEMINI_BAD_KEY, "auth"),
    ("aider", "400 bad request", AIDER_BAD_REQUEST, "contract"),
    ("aider", "404 unknown model", AIDER_NO_MODEL, "contract"),
    ("aider", "exit 1 after its banner", AIDER_BANNER_ONLY_CRASH, "transient"),
]


@pytest.mark.parametrize(("backend", "what", "out", "expected"), CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_backend_output_class(backend: str, what: str, out: Out, expected: str) -> None:
    parsed = PARSERS[backend](out)
    assert (parsed.outcome, parsed.error_class) == ("failed", expected), parsed.message
    assert parsed.message  # always a reason a person can read
    if expected != "rate_limited":
        assert parsed.reset_at is None  # only a rate limit lifts by itself


@pytest.mark.parametrize(
    ("backend", "out", "reset_at"),
    [
        # Claude Code and Codex print no reset for an API-key 429: None, and the router applies the profile's
        # default reset rather than a guess.
        ("claude", CC_429, None),
        ("codex", CODEX_429, None),
        ("aider", AIDER_429, NOW + timedelta(seconds=1)),  # "Please try again in 1s."
        ("gemini", GEMINI_PER_MINUTE, NOW + timedelta(seconds=1)),  # "Suggested retry after 1s."
        ("gemini", GEMINI_DAILY, datetime(2026, 11, 30, 0, 0, tzinfo=ZoneInfo("America/Los_Angeles"))),
    ],
)
def test_rate_limit_resets(backend: str, out: Out, reset_at: datetime | None) -> None:
    parsed = PARSERS[backend](out)
    assert (parsed.error_class, parsed.reset_at) == ("rate_limited", reset_at)


def test_every_class_but_the_gates_own_is_produced_by_some_parser() -> None:
    produced = {case[3] for case in CASES} | {"unknown"}
    # `unavailable` is the executor's (the CLI cannot start), `capability` the acceptance gate's.
    assert produced == set(ERROR_CLASSES) - {"unavailable", "capability"}


# --- the OpenAI-compatible HTTP adapter: one response -> class ------------------------------------------------------

HTTP_CASES: list[tuple[int, dict[str, str], str, str]] = [
    (529, {}, '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}', "transient"),
    (500, {}, '{"error":{"message":"boom","type":"server_error"}}', "transient"),
    (503, {}, '{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}', "transient"),
    (0, {}, "", "transient"),  # no response: refused, reset, timed out
    (401, {}, '{"error":{"message":"Incorrect API key provided","code":"invalid_api_key"}}', "auth"),
    (403, {}, '{"error":{"message":"nope","type":"permission_error"}}', "auth"),
    (400, {}, '{"error":{"code":400,"message":"API key not valid. Please pass a valid API key."}}', "auth"),
    (400, {}, '{"error":{"message":"Invalid value for \'messages\'","type":"invalid_request_error"}}', "contract"),
    (404, {}, '{"error":{"message":"The model `x` does not exist","code":"model_not_found"}}', "contract"),
    (429, {}, '{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}', "quota"),
    (
        400,
        {},
        '{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low"}}',
        "quota",
    ),
    (402, {}, '{"error":{"message":"Insufficient credits"}}', "quota"),
    (
        429,
        {"retry-after": "7"},
        '{"error":{"message":"Rate limit reached","code":"rate_limit_exceeded"}}',
        "rate_limited",
    ),
]


@pytest.mark.parametrize(("status", "headers", "body", "expected"), HTTP_CASES)
def test_http_response_class(status: int, headers: dict[str, str], body: str, expected: str) -> None:
    parsed = openai_compat.parse_chat_response(status, headers, body, NOW, TZ)
    assert (parsed.outcome, parsed.error_class) == ("failed", expected)


# --- the shared rule: status first, but quota and auth words beat a 4xx --------------------------------------------


@pytest.mark.parametrize(
    ("status", "text", "expected"),
    [
        (400, "API key not valid. Please pass a valid API key.", "auth"),
        (400, "Credit balance is too low", "quota"),
        (
            429,
            "You have reached your specified API usage limits. You will regain access on 2026-12-01 at 00:00 UTC.",
            "quota",
        ),
        (429, "You exceeded your current quota, please check your plan and billing details.", "quota"),
        (429, "This request would exceed your rate limit", "rate_limited"),
        (429, "Server overloaded, slow down", "rate_limited"),  # a 429 stays a 429
        (503, "quota exceeded upstream; invalid api key in gateway logs", "transient"),  # a 5xx stays transient
        (529, None, "transient"),
        (400, "max_tokens: Field required", "contract"),
        (404, None, "contract"),
        (None, "fetch failed", "transient"),
        (None, "Not logged in · Please run /login", "auth"),
        (None, "something else entirely", None),
    ],
)
def test_classify_status_and_words(status: int | None, text: str | None, expected: str | None) -> None:
    assert classify(status, text) == expected
