"""The remote LLM tier's pieces without a model: the endpoint spec, the HTTP client's retries and errors against a
small local HTTP server (real sockets), the scorer's token matching, the repository spec, the prices and the cost
report. The scorer against a real OpenAI-compatible server is tests/server/test_remote_llm_server.py."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from cascade import contract
from cascade.errors import ConfigError, TierFailure
from cascade.llm import cost_report
from cascade.llm.meter import Price
from cascade.llm.openai_http import Endpoint, EndpointError, OpenAIClient, normalise_url, retry_after
from cascade.llm.remote import RemoteScorer, _by_first_token, _tokens_after, endpoint_from_parameters
from cascade.repository import configgen
from cascade.repository.writer import python_source


def test_endpoint_spec_and_url():
    e = Endpoint.parse("openai:meta-llama/Llama-3.1-70B@http://vllm:8000")
    assert (e.model, e.url) == ("meta-llama/Llama-3.1-70B", "http://vllm:8000/v1")
    assert e.spec == "openai:meta-llama/Llama-3.1-70B@http://vllm:8000/v1"
    assert normalise_url("https://api.example.com/v2/") == "https://api.example.com/v2"
    for bad in ("llama@http://x", "openai:m", "openai:@http://x", "openai:m@ftp://x", "openai:m@http://u:p@x"):
        with pytest.raises(ConfigError):
            Endpoint.parse(bad)
    with pytest.raises(ConfigError, match="mode"):
        Endpoint.parse("openai:m@http://x", mode="magic")


def test_retry_after_reads_seconds_and_dates():
    assert retry_after("3") == 3.0
    assert retry_after(None) is None and retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)


def test_endpoint_from_parameters_and_url_override():
    e = Endpoint.parse("openai:m@http://a:1", key_env="MY_KEY", concurrency=3, timeout_s=5, retries=1)
    spec = configgen.remote_llm_spec(contract.TIER_LLM_LARGE, e, price=Price(1, 2).parameters())
    params = dict(spec.parameters)
    assert "MY_KEY" in params.values() and not any("sk-" in v for v in params.values())
    back = endpoint_from_parameters(params, "llm_large", environ={})
    assert back == e
    moved = endpoint_from_parameters(params, "llm_large", environ={"CASCADE_LLM_LARGE_URL": "https://b.example"})
    assert moved.url == "https://b.example/v1" and moved.model == "m"
    assert Price.from_parameters(params) == Price(1.0, 2.0)


def test_remote_spec_is_served_by_the_remote_glue(tmp_path):
    e = Endpoint.parse("openai:m@http://a:1")
    spec = configgen.remote_llm_spec(contract.TIER_LLM_LARGE, e)
    (tmp_path / spec.name).mkdir()
    configgen.write_config(spec, tmp_path / spec.name)
    assert python_source(tmp_path / spec.name) == configgen.BACKEND_LLM_REMOTE
    assert spec.name == "llm_large"


def test_prices():
    assert Price.parse("0.6/2.4") == Price(0.6, 2.4)
    assert Price.parse("3") == Price(3.0, 3.0)
    assert Price.parse("cpu:0.05") == Price(per_cpu_hour=0.05)
    assert Price(1, 2, 3600).cost(1e6, 5e5, 2) == pytest.approx(1 + 1 + 2)
    with pytest.raises(ConfigError, match="IN/OUT"):
        Price.parse("cheap")


def test_first_token_matching():
    top = {" positive": -0.1, " neg": -2.5, " the": -4.0}
    out = _by_first_token(top, ["positive", "negative", "neutral"])
    assert out.tolist() == [-0.1, -2.5, -4.0]  # neutral is not listed: the lowest listed log-prob
    assert _tokens_after([" Sent", "iment", ":", " pos", "itive"], [0, 5, 10, 11, 15], 11, 20) == (" pos", "itive")


class _Stub(BaseHTTPRequestHandler):
    """Answers from the server's ``script``: a list of (status, headers, body) taken one per request."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.auth.append(self.headers.get("Authorization"))
        status, headers, body = self.server.script.pop(0) if self.server.script else self.server.default
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture()
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    ok = json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 1}}).encode()
    server.script, server.default, server.auth = [], (200, {}, ok), []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def _client(stub, **kw) -> OpenAIClient:
    endpoint = Endpoint.parse(f"openai:m@http://127.0.0.1:{stub.server_port}", **kw)
    return OpenAIClient(endpoint, api_key="sk-secret", backoff_s=0.01)


def test_client_waits_out_429_with_retry_after_and_counts_usage(stub):
    stub.script = [(429, {"Retry-After": "0.3"}, b"{}"), (503, {}, b"busy")]
    client = _client(stub)
    start = time.perf_counter()
    assert client.post("/completions", {"prompt": "x"})["usage"]["prompt_tokens"] == 7
    assert time.perf_counter() - start >= 0.3
    assert client.usage.snapshot() | {} == {
        "requests": 3, "prompt_tokens": 7, "completion_tokens": 1, "retries": 2, "failures": 0
    }  # fmt: skip
    assert stub.auth == ["Bearer sk-secret"] * 3


def test_client_errors_name_the_endpoint_and_never_the_key(stub):
    stub.default = (500, {}, b"boom")
    with pytest.raises(EndpointError, match=r"127\.0\.0\.1.*HTTP 500.*3 tries") as failed:
        _client(stub, retries=2).post("/completions", {})
    assert isinstance(failed.value, TierFailure) and "sk-secret" not in str(failed.value)
    stub.default = (401, {}, b"no")
    with pytest.raises(EndpointError, match=r"refused the API key.*\$OPENAI_API_KEY") as refused:
        _client(stub).post("/completions", {})
    assert "sk-secret" not in str(refused.value)
    stub.default = (200, {}, b"{not json")
    with pytest.raises(EndpointError, match="not JSON"):
        _client(stub).post("/completions", {})


def test_probe_reports_a_refused_key_as_a_config_error(stub):
    stub.default = (401, {}, b"{}")
    scorer = RemoteScorer(Endpoint.parse(f"openai:m@http://127.0.0.1:{stub.server_port}"))
    with pytest.raises(ConfigError, match="cannot score labels.*refused the API key"):
        scorer.probe()
    scorer.close()


def test_probe_falls_back_to_chat_and_scores_by_first_token(stub):
    chat = {
        "choices": [{"logprobs": {"content": [{"top_logprobs": [
            {"token": "yes", "logprob": -0.2}, {"token": "no", "logprob": -1.8}
        ]}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
    }  # fmt: skip
    models = json.dumps({"data": [{"id": "m"}]}).encode()
    stub.script = [(200, {}, models), (404, {}, b"no completions here")]
    stub.default = (200, {}, json.dumps(chat).encode())
    scorer = RemoteScorer(Endpoint.parse(f"openai:m@http://127.0.0.1:{stub.server_port}", retries=0), calibrate=False)
    assert "chat" in scorer.probe() and scorer.mode == "chat"
    from cascade.llm.prompts import Prompt

    result = scorer.score([Prompt("Q: ", "is it?", "\nA:")] * 3, ["yes", "no"])
    expected = np.exp([-0.2, -1.8]) / np.exp([-0.2, -1.8]).sum()
    assert np.allclose(result.probs, expected, atol=1e-6) and result.probs.shape == (3, 2)
    scorer.close()


def test_cost_report_from_two_scrapes():
    def exposition(rows, tin, tout, cost):
        return (
            f'nv_inference_count{{model="llm_large",version="1"}} {rows}\n'
            f'cascade_llm_tokens_total{{model="llm_large",direction="in"}} {tin}\n'
            f'cascade_llm_tokens_total{{model="llm_large",direction="out"}} {tout}\n'
            f'cascade_llm_cost_total{{model="llm_large"}} {cost}\n'
            'nv_inference_count{model="sst2_logreg",version="1"} 1000\n'
        )

    before = cost_report.parse(exposition(10, 1000, 10, 0.5))
    after = cost_report.parse(exposition(30, 3000, 30, 1.5))
    report = cost_report.cost_report(before, after, rows=200)
    assert report["run"]["tokens_in"] == 2000 and report["run"]["cost"] == pytest.approx(1.0)
    assert report["all_llm"]["tokens_in"] == pytest.approx(200 * 100)  # 100 tokens per large-tier row
    assert report["cost_ratio"] == pytest.approx(10.0)
    assert "10.0x" in "\n".join(cost_report.cost_lines(report))
    assert "note" in cost_report.cost_report(None, after, 5)
    assert cost_report.metrics_url_for("10.0.0.2:8001") == "http://10.0.0.2:8002/metrics"
    assert cost_report.metrics_url_for("127.0.0.1:45123") is None


def test_a_tier_set_to_an_endpoint_keeps_it_through_later_builds(tmp_path):
    """``cascade build --llm-large openai:...`` writes the remote model once; builds without the flag (every export
    calls ensure_llms) leave it, and the teacher's name matches what serves the tier."""
    from cascade_export.build.llm_tiers import ensure_llms, served_llm

    endpoint = Endpoint.parse("openai:big@http://10.0.0.9:8000")
    ensure_llms(tmp_path, {contract.TIER_LLM_LARGE: endpoint}, {contract.TIER_LLM_LARGE: Price(0.6, 2.4)})
    config = (tmp_path / "llm_large" / "config.pbtxt").read_text()
    ensure_llms(tmp_path)
    assert (tmp_path / "llm_large" / "config.pbtxt").read_text() == config
    assert python_source(tmp_path / "llm_large") == configgen.BACKEND_LLM_REMOTE
    assert python_source(tmp_path / "llm_small") == configgen.BACKEND_LLM_SCORER
    assert served_llm(tmp_path, contract.TIER_LLM_LARGE) == endpoint.spec
    assert served_llm(tmp_path, contract.TIER_LLM_SMALL) == "smollm2-135m:f16"
    assert served_llm(None, contract.TIER_LLM_LARGE) == "qwen2.5-coder-1.5b"


def test_build_and_report_flags_parse_prices_and_endpoints():
    from cascade.cli.arguments import llm_endpoints, report_prices
    from cascade.cli.main import build_parser

    args = build_parser().parse_args(
        ["build", "--llm-large", "openai:big@https://api.example.com", "--llm-price", "llm_large=3/15",
         "--llm-concurrency", "8", "--api-key-env", "MY_KEY"]
    )  # fmt: skip
    endpoints, prices = llm_endpoints(args)
    large = endpoints[contract.TIER_LLM_LARGE]
    assert (large.url, large.concurrency, large.key_env) == ("https://api.example.com/v1", 8, "MY_KEY")
    assert prices == {contract.TIER_LLM_LARGE: Price(3.0, 15.0)}
    args = build_parser().parse_args(
        ["filter", "t.csv", "--task", "x", "--out", "o.csv", "--llm-price", "llm_large=cpu:1"]
    )
    assert report_prices(args) == {"llm_large": Price(per_cpu_hour=1.0)}
    with pytest.raises(ConfigError, match="llm_small=PRICE"):
        report_prices(build_parser().parse_args(["filter", "t", "--task", "x", "--out", "o", "--llm-price", "gpt=1"]))


def test_a_report_priced_after_the_fact():
    text = (
        'nv_inference_count{model="llm_large",version="1"} 10\n'
        'cascade_llm_cpu_seconds_total{model="llm_large"} 36\n'
        'cascade_llm_tokens_total{model="llm_large",direction="in"} 500\n'
    )
    report = cost_report.cost_report(
        cost_report.parse(""), cost_report.parse(text), rows=100, prices={"llm_large": Price(per_cpu_hour=100.0)}
    )
    assert report["run"]["cost"] == pytest.approx(1.0) and report["all_llm"]["cost"] == pytest.approx(10.0)
    assert report["cost_ratio"] == pytest.approx(10.0) and report["priced"]
