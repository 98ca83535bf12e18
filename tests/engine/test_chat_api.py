"""LLM.chat(): conversations through the chat template give what generate() gives on the same prompt ids;
add_generation_prompt, chat_template and chat_template_kwargs reach the template; render_chat's and
load_chat_template's errors say what to change."""
import pytest

from engine import LLM, SamplingParams
from engine.chat_template import load_chat_template, render_chat
from models.tokenizer import special_token_id
from tests.engine.test_generation_defaults import final_only, spy_on_add_request

HELLO = [{"role": "user", "content": "Hello there"}]
MATH = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1 + 1 ="}]
SUFFIX_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}{{ suffix }}"
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(qwen3_checkpoint):
    return LLM(qwen3_checkpoint[0], device="cpu", dtype="float32", max_model_len=256)


def by_hand(llm, conversation, add_generation_prompt=True):
    tok = llm.get_tokenizer()
    text = tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tok.encode(text, add_special_tokens=False)


def test_chat_equals_generate_on_the_rendered_prompt(llm):
    prompts = [by_hand(llm, HELLO), by_hand(llm, MATH)]
    assert prompts[0][0] == special_token_id("<|im_start|>")        # the template's specials, as one token each
    ref = llm.generate(prompts, GREEDY, use_tqdm=False)
    one = llm.chat(HELLO, GREEDY, use_tqdm=False)
    both = llm.chat([HELLO, MATH], GREEDY, use_tqdm=False)
    assert len(one) == 1 and len(both) == 2
    assert one[0].prompt_token_ids == prompts[0]
    assert [o.prompt_token_ids for o in both] == prompts                # conversation order
    assert one[0].outputs[0].token_ids == ref[0].outputs[0].token_ids
    assert [o.outputs[0].token_ids for o in both] == [r.outputs[0].token_ids for r in ref]
    assert all(len(o.outputs[0].token_ids) == 10 for o in both)


def test_per_conversation_sampling_params_and_empty_list(llm):
    outs = llm.chat([HELLO, MATH], [SamplingParams(max_tokens=2, ignore_eos=True),
                                    SamplingParams(max_tokens=4, ignore_eos=True)], use_tqdm=False)
    assert [len(o.outputs[0].token_ids) for o in outs] == [2, 4]
    assert llm.chat([], GREEDY, use_tqdm=False) == []


def test_without_sampling_params_chat_takes_the_models_defaults(llm, monkeypatch):
    seen = spy_on_add_request(monkeypatch, llm.engine)
    monkeypatch.setattr(llm.engine, "default_sampling_fields", {"temperature": 0.0, "max_tokens": 3})
    (out,) = llm.chat(HELLO, use_tqdm=False)
    assert seen == [final_only(temperature=0.0, max_tokens=3)]
    assert len(out.outputs[0].token_ids) <= 3


def test_add_generation_prompt_false_leaves_out_the_assistant_header(llm):
    with_header = llm.chat(HELLO, GREEDY, use_tqdm=False)[0].prompt_token_ids
    without = llm.chat(HELLO, GREEDY, use_tqdm=False, add_generation_prompt=False)[0].prompt_token_ids
    assert without == by_hand(llm, HELLO, add_generation_prompt=False)
    assert with_header[:len(without)] == without and len(with_header) > len(without)
    assert llm.get_tokenizer().decode(with_header[len(without):]) == "<|im_start|>assistant\n"


def test_chat_template_and_its_kwargs_reach_the_template(llm):
    tok = llm.get_tokenizer()
    out = llm.chat(MATH, GREEDY, use_tqdm=False, chat_template=SUFFIX_TEMPLATE,
                   chat_template_kwargs={"suffix": " ->"})[0]
    assert out.prompt_token_ids == tok.encode("Be brief.1 + 1 = ->", add_special_tokens=False)
    assert out.outputs[0].token_ids == llm.generate([out.prompt_token_ids], GREEDY,
                                                    use_tqdm=False)[0].outputs[0].token_ids


def test_a_tokenizer_without_a_template_needs_chat_template(llm):
    tok = llm.get_tokenizer()
    saved, tok.chat_template = tok.chat_template, None
    try:
        with pytest.raises(ValueError, match=r"no chat template; pass chat_template=.*--chat-template"):
            llm.chat(HELLO, GREEDY, use_tqdm=False)
        given = llm.chat(HELLO, GREEDY, use_tqdm=False, chat_template=SUFFIX_TEMPLATE)[0]
        assert given.prompt_token_ids == tok.encode("Hello there", add_special_tokens=False)
    finally:
        tok.chat_template = saved
    assert not llm.engine.has_unfinished_requests()


def test_render_chat_errors_say_what_to_change(llm):
    tok = llm.get_tokenizer()
    with pytest.raises(ValueError, match="cannot apply the chat template: .*boom"):
        render_chat(tok, HELLO, chat_template="{{ raise_exception('boom') }}")
    with pytest.raises(ValueError, match="conversation must be a list of"):
        render_chat(tok, "Hello there")
    with pytest.raises(ValueError, match="conversation must be a list of"):
        llm.chat([HELLO, "not a conversation"], GREEDY, use_tqdm=False)


def test_load_chat_template_file_inline_and_bad_value(tmp_path):
    path = tmp_path / "template.jinja"
    path.write_text(SUFFIX_TEMPLATE)
    assert load_chat_template(str(path)) == SUFFIX_TEMPLATE
    assert load_chat_template(SUFFIX_TEMPLATE) == SUFFIX_TEMPLATE
    assert load_chat_template("{{ messages[0]['content'] }}") == "{{ messages[0]['content'] }}"
    assert load_chat_template(None) is None
    for bad in (str(tmp_path / "missing.jinja"), "chatml", str(tmp_path)):
        with pytest.raises(ValueError, match="--chat-template must be a file path or a Jinja template string"):
            load_chat_template(bad)


def test_continue_final_message_leaves_the_last_message_open(llm):
    conversation = HELLO + [{"role": "assistant", "content": "General Kenobi"}]
    out = llm.chat(conversation, GREEDY, use_tqdm=False, add_generation_prompt=False,
                   continue_final_message=True)[0]
    tok = llm.get_tokenizer()
    text = tok.apply_chat_template(conversation, tokenize=False, continue_final_message=True)
    assert out.prompt_token_ids == tok.encode(text, add_special_tokens=False)
    assert tok.decode(out.prompt_token_ids).endswith("<|im_start|>assistant\nGeneral Kenobi")
    with pytest.raises(ValueError, match="Cannot set both `continue_final_message` and `add_generation_prompt`"):
        llm.chat(conversation, GREEDY, use_tqdm=False, continue_final_message=True)


def test_content_parts_are_joined_by_newlines(llm):
    """A message's content as OpenAI text parts renders as vLLM renders it for a text template: the parts
    joined by newlines; another part type is a ValueError naming it."""
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    out = llm.chat(parts, GREEDY, use_tqdm=False)[0]
    assert out.prompt_token_ids == by_hand(llm, [{"role": "user", "content": "Hello\nthere"}])
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}]
    with pytest.raises(ValueError, match="only text content parts are supported, got 'image_url'"):
        llm.chat(image, GREEDY, use_tqdm=False)
