"""Priority scheduling through the offline API (vLLM's scheduling_policy and per-prompt priority):
the order requests run in follows the priorities and never changes what is generated, also under
preemption; an fcfs engine refuses a priority other than 0 with vLLM's message; the config and the
serve flag."""
import pytest

from engine import LLM, SamplingParams
from engine.config import EngineConfig
from tests.engine.test_generate_parity import hf_greedy, prompts

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
TEXTS = ["Hello there", "abc", "The quick brown fox", "1, 2, 3,", "zzz"]
PRIORITIES = [3, -1, 0, 2, 1]
NOT_ENABLED = "Got priority 1 but Priority scheduling is not enabled."
HELLO = [{"role": "user", "content": "Hello there"}]
MATH = [{"role": "user", "content": "1 + 1 ="}]


def make_llm(path, policy, **kw):
    return LLM(path, device="cpu", dtype="float32", scheduling_policy=policy, **{"max_model_len": 128, **kw})


@pytest.fixture(scope="module")
def fcfs_llm(qwen3_checkpoint):
    return make_llm(qwen3_checkpoint[0], "fcfs", max_num_seqs=2)


@pytest.fixture(scope="module")
def priority_llm(qwen3_checkpoint):
    return make_llm(qwen3_checkpoint[0], "priority", max_num_seqs=2)


def token_ids(outs):
    return [o.outputs[0].token_ids for o in outs]


def finish_steps(engine, texts, priorities, params=GREEDY) -> list[int]:
    """The step each request finishes in, all added before the first step."""
    for i, (text, priority) in enumerate(zip(texts, priorities)):
        engine.add_request(f"order-{i}", text, params, priority=priority)
    done, step = {}, 0
    while engine.has_unfinished_requests():
        step += 1
        done.update({out.request_id: step for out in engine.step() if out.finished})
    return [done[f"order-{i}"] for i in range(len(texts))]


def test_priority_changes_the_order_not_the_outputs(fcfs_llm, priority_llm):
    plain = fcfs_llm.generate(TEXTS, GREEDY, use_tqdm=False)
    prioritized = priority_llm.generate(TEXTS, GREEDY, use_tqdm=False, priority=PRIORITIES)
    assert token_ids(prioritized) == token_ids(plain)
    assert [o.prompt for o in prioritized] == TEXTS                   # outputs in input order
    assert token_ids(priority_llm.generate(TEXTS, GREEDY, use_tqdm=False)) == token_ids(plain)


def test_requests_run_in_priority_order_two_at_a_time(fcfs_llm, priority_llm):
    # max_num_seqs=2: the two most urgent run first (priorities -1, 0), then 1 and 2, then 3
    steps = finish_steps(priority_llm.engine, TEXTS, PRIORITIES)
    assert steps[1] == steps[2] < steps[4] == steps[3] < steps[0]
    steps = finish_steps(priority_llm.engine, TEXTS[:3], [0, 0, 0])   # equal: arrival order
    assert steps[0] == steps[1] < steps[2]
    steps = finish_steps(fcfs_llm.engine, TEXTS, [0] * len(TEXTS))
    assert steps[0] == steps[1] < steps[2] == steps[3] < steps[4]


def test_preemption_under_priority_keeps_output(qwen3_checkpoint):
    """12 blocks of 8 tokens for up to 72 tokens per request: a low-priority request runs first, more
    urgent ones arrive behind it; blocks run out and the least urgent running request is preempted
    (also after its turn in a step), and every output still equals transformers' greedy one."""
    path, hf_model = qwen3_checkpoint
    batch = prompts(hf_model.config.vocab_size, lens=(30, 25, 40, 20), seed=3)
    llm = make_llm(path, "priority", block_size=8, num_kv_blocks=12, max_model_len=96,
                   enable_prefix_caching=False)
    engine, params = llm.engine, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    engine.add_request("lax", batch[0], params, priority=10)
    final = {out.request_id: out for out in engine.step() if out.finished}
    for i, (prompt, priority) in enumerate(zip(batch[1:], (2, 0, 1))):
        engine.add_request(f"urgent-{i}", prompt, params, priority=priority)
    while engine.has_unfinished_requests():
        final.update({out.request_id: out for out in engine.step() if out.finished})
    assert engine.get_stats().num_preemptions > 0
    got = [final[rid].outputs[0].token_ids for rid in ("lax", "urgent-0", "urgent-1", "urgent-2")]
    assert got == [hf_greedy(hf_model, p) for p in batch]
    assert engine.block_manager.num_free_blocks == 12


def test_a_request_that_preempts_itself_in_an_empty_step_gives_back_its_runner_row():
    """Priority: A (least urgent) needs a block, preempts itself and nothing else runs that step; the
    step is never launched, and A's block-table row must still go back to the runner (it used to stay
    taken, and with max_num_seqs rows in use the next admission failed with IndexError)."""
    engine = make_llm("preset:tiny-qwen3", "priority", block_size=8, num_kv_blocks=4, max_model_len=32,
                      max_num_seqs=2, async_scheduling=False, enable_prefix_caching=False).engine
    engine.add_request("A", list(range(10, 25)), GREEDY, priority=9)     # 15 tokens: 2 blocks
    engine.step()
    engine.add_request("B", list(range(30, 46)), GREEDY, priority=0)     # 16 tokens: the other 2 blocks
    engine.step()
    empty = engine.scheduler.schedule()                    # A preempts itself; B's turn comes later
    assert not empty.scheduled and empty.preempted_request_ids == ["A"]
    engine.add_request("C", list(range(60, 67)), GREEDY, priority=0)
    finished = {}
    while engine.has_unfinished_requests():                # B and C run next: C needs A's row
        finished.update({out.request_id: out.outputs[0] for out in engine.step() if out.finished})
    assert sorted(finished) == ["A", "B", "C"] and all(len(c.token_ids) == 6 for c in finished.values())


def test_fcfs_engine_refuses_a_priority_with_vllms_message(fcfs_llm):
    with pytest.raises(ValueError) as err:
        fcfs_llm.generate(TEXTS[:2], GREEDY, use_tqdm=False, priority=[0, 1])
    assert str(err.value) == NOT_ENABLED
    assert not fcfs_llm.engine.has_unfinished_requests()             # the first one was taken back
    with pytest.raises(ValueError, match=NOT_ENABLED):
        fcfs_llm.engine.add_request("direct", "abc", GREEDY, priority=1)
    zeros = fcfs_llm.generate(TEXTS[:2], GREEDY, use_tqdm=False, priority=[0, 0])
    assert token_ids(zeros) == token_ids(fcfs_llm.generate(TEXTS[:2], GREEDY, use_tqdm=False))


def test_priority_must_be_one_int_per_prompt(priority_llm):
    with pytest.raises(ValueError, match="priority has 1 entries but there are 2 prompts"):
        priority_llm.generate(TEXTS[:2], GREEDY, use_tqdm=False, priority=[1])
    with pytest.raises(ValueError, match="priority must be a list of ints, one per prompt, got 1"):
        priority_llm.generate(TEXTS[:2], GREEDY, use_tqdm=False, priority=1)
    for bad in ("high", 1.5, None):
        with pytest.raises(ValueError, match="priority must be an int"):
            priority_llm.generate(TEXTS[:2], GREEDY, use_tqdm=False, priority=[0, bad])
    assert not priority_llm.engine.has_unfinished_requests()


def test_chat_takes_one_priority_per_conversation(fcfs_llm, priority_llm):
    plain = fcfs_llm.chat([HELLO, MATH], GREEDY, use_tqdm=False)
    assert token_ids(priority_llm.chat([HELLO, MATH], GREEDY, use_tqdm=False, priority=[1, 0])) == token_ids(plain)
    with pytest.raises(ValueError, match="priority has 1 entries but there are 2 prompts"):
        priority_llm.chat([HELLO, MATH], GREEDY, use_tqdm=False, priority=[1])
    with pytest.raises(ValueError, match=NOT_ENABLED):
        fcfs_llm.chat(HELLO, GREEDY, use_tqdm=False, priority=[1])


def test_scheduling_policy_config_and_serve_flag(capsys):
    from engine.serve import build_parser, config_from_args
    assert EngineConfig(model="m").scheduling_policy == "fcfs"
    with pytest.raises(ValueError, match=r"scheduling_policy must be one of \('fcfs', 'priority'\), got 'lifo'"):
        EngineConfig(model="m", scheduling_policy="lifo")
    parser = build_parser()
    assert config_from_args(parser.parse_args(["--model", "m"])).scheduling_policy == "fcfs"
    args = parser.parse_args(["--model", "m", "--scheduling-policy", "priority"])
    assert config_from_args(args).scheduling_policy == "priority"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--scheduling-policy", "lifo"])
    assert "invalid choice: 'lifo'" in capsys.readouterr().err
