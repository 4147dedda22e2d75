"""One contract for the three engines, run on the bundled SmolLM2-135M: vLLM offline, a vLLM server spawned on
127.0.0.1, and transformers. Plus the failure paths the LLM stage relies on: a dead server is a clear
error after the configured retries; a prompt too long for the context fails that conversation only."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rephrase.llm.engine import Engine, Sampling
from rephrase.llm.factory import build_engine
from rephrase.llm.openai_engine import OpenAIServerEngine
from rephrase.llm.prompts import load_prompts
from rephrase.llm.server import ServerError, ServerOptions, VLLMServer, engine_args_to_flags
from rephrase.models import BUNDLED_NAME, BUNDLED_REF, resolve_model

# CPU settings measured on this machine (DATA.md); 2048 tokens bounds the KV cache a request may need.
CPU_ARGS = {"dtype": "float32", "enforce_eager": True, "max_model_len": 2048}
# Low temperature keeps the sampled path (n=2 needs it) but makes the tiny model answer the question asked.
SAMPLING = Sampling(temperature=0.2, top_p=0.95, max_tokens=16, seed=0)
JAPAN = [{"role": "user", "content": "What is the capital of Japan?"}]
COLORS = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name three colors."}]
PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """vLLM caches into a temporary folder, not ~/.cache/vllm; spawned servers and workers inherit it."""
    root = tmp_path_factory.mktemp("vllm")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CACHE_ROOT", str(root / "cache"))
        yield root


@pytest.fixture(scope="module")
def model() -> str:
    """The converted bundled model, from $REPHRASE_CACHE (or ~/.cache/rephrase): converted once per machine."""
    return resolve_model(BUNDLED_REF)


@pytest.fixture(scope="module", params=["vllm", "vllm-server", "transformers"])
def engine(request: pytest.FixtureRequest, env: Path, model: str) -> Iterator[Engine]:
    start = time.perf_counter()
    built = build_engine(request.param, model, engine_args=CPU_ARGS, log_path=env / "server.log", seed=0)
    print(f"\n{request.param} engine ready in {time.perf_counter() - start:.1f} s")
    server = getattr(built, "server", None)
    pid = server.process.pid if server is not None else None
    yield built
    built.close()
    if pid is not None:  # the spawned server and every process of its group are gone
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)


@pytest.mark.slow
def test_engine_contract(engine: Engine) -> None:
    out = engine.generate([JAPAN, COLORS], n=2, sampling=SAMPLING)
    assert len(out) == 2
    for generation in out:
        assert generation.error is None and len(generation.completions) == 2
        for c in generation.completions:
            assert c.text.strip() and c.finish_reason in {"stop", "length"} and 0 < c.output_tokens <= 16
    assert any("Tokyo" in c.text for c in out[0].completions)  # input order kept
    assert not any("Tokyo" in c.text for c in out[1].completions)
    if isinstance(engine, OpenAIServerEngine):
        assert "tokenizer" not in vars(engine)  # token counts came from the server, not a client-side re-count
    assert (engine.model_id, engine.model_revision[:12]) == (BUNDLED_NAME, "gguf-sha256:")
    assert engine.tokenizer.apply_chat_template(JAPAN, tokenize=False, add_generation_prompt=True).endswith(
        "<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_too_long_prompt_fails_only_its_conversation(engine: Engine) -> None:
    long = [{"role": "user", "content": "word " * 2100}]
    out = engine.generate([long, JAPAN], n=1, sampling=SAMPLING)
    assert out[0].completions == [] and out[0].error
    # The server refuses it itself (HTTP 400, not retried); the in-process engines check before generating.
    expected = "BadRequestError" if isinstance(engine, OpenAIServerEngine) else "prompt_too_long"
    assert out[0].error.startswith(expected), out[0].error
    assert out[1].error is None and len(out[1].completions) == 1


@pytest.mark.slow
def test_spawned_server_binds_localhost(engine: Engine) -> None:
    if not isinstance(engine, OpenAIServerEngine):
        pytest.skip("only the vllm-server engine has a server")
    assert engine.base_url.startswith("http://127.0.0.1:")
    assert engine.served_model_name == BUNDLED_NAME


@pytest.mark.slow
def test_transformers_engine_is_deterministic_per_seed(engine: Engine) -> None:
    if engine.__class__.__name__ != "TransformersEngine":
        pytest.skip("vLLM engines are seeded once per engine, not per call")
    sampling = Sampling(temperature=0.7, max_tokens=16, seed=3)
    first, second = (engine.generate([COLORS], n=2, sampling=sampling) for _ in range(2))
    assert first == second


@pytest.mark.slow
def test_spawned_server_killed_mid_run_is_restarted_and_the_call_answered(engine: Engine) -> None:
    """SIGKILL of the server's whole group (what the OOM killer or a preemption does): the next call fails to
    connect, the engine starts the server again on the same port and sends the failed conversations once more."""
    if not isinstance(engine, OpenAIServerEngine) or engine.server is None:
        pytest.skip("only a server the engine spawned is restarted")
    server = engine.server
    old_pid, url, restarts = server.process.pid, engine.base_url, engine.restarts_left
    os.killpg(old_pid, 9)
    server.process.wait()
    out = engine.generate([JAPAN, COLORS], n=2, sampling=SAMPLING)
    assert all(g.error is None and len(g.completions) == 2 for g in out), [g.error for g in out]
    assert server.process.pid != old_pid and engine.base_url == url and engine.restarts_left == restarts - 1
    assert server.healthy()
    with pytest.raises(ProcessLookupError):
        os.killpg(old_pid, 0)


def _dead_url() -> str:
    from rephrase.llm.server import free_port

    return f"http://127.0.0.1:{free_port('127.0.0.1')}"


def _retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The retries the openai client made, as it logs them ("Retrying request in 0.4 seconds (retry 1 of 2)")."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Retrying request")]


def test_dead_server_url_is_a_clear_error_after_the_configured_retries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="openai")
    with pytest.raises(ServerError, match=r"no OpenAI-compatible server answers at http://127\.0\.0\.1:\d+/v1/models"):
        build_engine("vllm-server", "some/model", server_url=_dead_url(), max_retries=2, request_timeout_s=5)
    assert [m.split("(")[-1] for m in _retries(caplog)] == ["retry 1 of 2)", "retry 2 of 2)"]


def test_server_dying_mid_run_records_errors_per_conversation(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="openai")
    engine = OpenAIServerEngine(_dead_url(), "some/model", served_model_name="m", max_retries=1, request_timeout_s=5)
    try:
        out = engine.generate([JAPAN, COLORS], n=2, sampling=SAMPLING)
    finally:
        engine.close()
    assert [m.split("(")[-1] for m in _retries(caplog)] == ["retry 1 of 1)"] * 2  # one per conversation
    assert [g.completions for g in out] == [[], []]
    assert all(g.error and g.error.startswith("APIConnectionError") for g in out)


def test_unknown_engine_kind_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown engine 'sglang'; known: vllm, vllm-server, transformers"):
        build_engine("sglang", "x")  # type: ignore[arg-type]


def test_missing_model_folder_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="rephrase models fetch"):
        build_engine("vllm", str(tmp_path / "missing"))


def test_engine_args_become_server_flags() -> None:
    args = {"max_model_len": 2048, "enforce_eager": True, "enable_prefix_caching": False, "revision": None}
    assert engine_args_to_flags(args) == ["--max-model-len", "2048", "--enforce-eager", "--no-enable-prefix-caching"]
    assert engine_args_to_flags({"override_generation_config": {"top_k": 1}}) == [
        "--override-generation-config",
        '{"top_k": 1}',
    ]


@pytest.mark.slow
def test_server_that_dies_at_start_reports_its_log(env: Path, model: str) -> None:
    server = VLLMServer(
        model,
        served_model_name="m",
        engine_args={"no_such_option": 1},
        options=ServerOptions(startup_timeout_s=120),
        log_path=env / "bad-server.log",
    )
    with pytest.raises(ServerError, match=r"(?s)exited with code \d+ while starting.*no-such-option"):
        server.start()
    assert server.process is None


@pytest.mark.slow
def test_server_dies_with_its_parent(env: Path, model: str) -> None:
    """A parent killed without cleanup (SIGKILL, or SIGTERM's default action) must not leave a server running."""
    code = f"from rephrase.llm.server import VLLMServer; VLLMServer({model!r}, served_model_name='m').start()"
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        server_pid = ""
        while not server_pid and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.2)
            ps = subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent.pid)], capture_output=True, text=True)
            server_pid = ps.stdout.strip()
        assert server_pid, "the parent never spawned a server"
        time.sleep(3)  # past the server's prctl, still importing vLLM
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(int(server_pid), 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(int(server_pid), 9)
    pytest.fail(f"server {server_pid} outlived its parent by 30 s")


@pytest.mark.slow
def test_vllm_offline_n_candidates_are_one_request_per_document(engine: Engine, wiki_texts: list[str]) -> None:
    """Best-of-n costs one request per document: one `LLM.enqueue_chat` carrying SamplingParams(n=4), answered
    with one RequestOutput per document holding the 4 candidates. vLLM runs the 4 samples as child requests of that
    one; their prompt is computed once and reused from the prefix cache in whole KV blocks (128 tokens on CPU),
    so each RequestOutput reports its prompt's full blocks as cached. The cache hit covers document tokens, which
    no other conversation shares, and a fresh document asked for n=1 reports none: the reuse is between siblings."""
    if type(engine).__name__ != "VLLMEngine":
        pytest.skip("the offline vLLM engine's requests are what is counted here")
    prompt = load_prompts(PROMPTS)["wikipedia"]
    llm = engine.llm
    block = llm.llm_engine.vllm_config.cache_config.block_size
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    docs = [prompt.messages(t) for t in wiki_texts[40:60] if len(t) > 400][:4]
    calls: list[tuple[int, list[int], list[str]]] = []
    finished: dict[str, object] = {}
    enqueue, step = llm.enqueue_chat, llm.llm_engine.step

    def spy_enqueue(conversations, params, **kwargs):
        ids = enqueue(conversations, params, **kwargs)
        calls.append((len(conversations), [p.n for p in params], ids))
        return ids

    def spy_step():
        outputs = step()
        finished.update((o.request_id, o) for o in outputs if o.finished)
        return outputs

    llm.enqueue_chat, llm.llm_engine.step = spy_enqueue, spy_step
    short = Sampling(temperature=0.7, max_tokens=8)  # every sample runs to the cap, so all 4 finish together
    try:
        out = engine.generate(docs[:3], 4, short)
        control = engine.generate(docs[3:], 1, short)
    finally:
        del llm.enqueue_chat, llm.llm_engine.step
    assert [(n_conv, ns) for n_conv, ns, _ in calls] == [(3, [4, 4, 4]), (1, [1])]
    outputs = [finished[i.split("-")[0]] for i in calls[0][2]]  # ids from enqueue_chat carry a random suffix
    assert [len(o.outputs) for o in outputs] == [4, 4, 4] and all(len(g.completions) == 4 for g in out)
    assert len({o.request_id for o in outputs}) == 3 and control[0].error is None
    ids = [o.prompt_token_ids for o in outputs]
    shared_template = next(i for i, toks in enumerate(zip(*ids, strict=False)) if len(set(toks)) > 1)
    for o in outputs:
        assert len(o.prompt_token_ids) > block > shared_template
        assert o.num_cached_tokens == len(o.prompt_token_ids) // block * block, o
    assert finished[calls[1][2][0].split("-")[0]].num_cached_tokens == 0


@pytest.mark.slow
def test_a_request_submitted_mid_run_joins_the_running_batch(engine: Engine) -> None:
    """Continuous batching through `submit`: a short request sent while a long one generates is answered first,
    without waiting for the long one (the LLM stage sends resamples and the next batch this way). The transformers
    engine generates each submit whole, in order, so it is the control: there the short one waits."""
    story = [{"role": "user", "content": "Write a long story about a dragon who learns to read, in ten chapters."}]
    long = engine.submit([story], 1, Sampling(temperature=0.7, max_tokens=160))[0]
    time.sleep(1.0)  # the long request is generating
    short = engine.submit([JAPAN], 1, Sampling(temperature=0.2, max_tokens=4))[0]
    short.result(timeout=120)
    joined = not long.done()
    result = long.result(timeout=300)
    assert result.error is None and result.completions[0].output_tokens > 40, result  # still running at 1 s
    assert joined is (type(engine).__name__ != "TransformersEngine")
