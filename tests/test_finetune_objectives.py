"""The fine-tuning objectives: the SFT loss and the DPO/IPO losses and gradients equal TRL's on the same batch, the
Bradley-Terry reward model reads the right token, and GRPO's advantages, clipping and KL behave as specified
(and a few GRPO steps make a tiny policy prefer the rewarded answer)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bitsandbytes (imported by trl/peft) may look for hub kernels

from llmbook.finetune.chat import CHAT_TEMPLATE, END, EOS, ChatFormat, add_chat_tokens, special_tokens  # noqa: E402
from llmbook.finetune.data import IGNORE, Example, PreferencePair, encode_chats, encode_pairs, pad_batch  # noqa: E402
from llmbook.finetune.dpo import DPOObjective, collate, dpo_loss, reference_logps, sequence_logps  # noqa: E402
from llmbook.finetune.grpo import group_advantages, grpo_loss, token_logps  # noqa: E402
from llmbook.finetune.reward import RewardModel, RewardObjective, bradley_terry_loss, pair_batch  # noqa: E402
from llmbook.model import GPT, GPTConfig, to_hf  # noqa: E402
from llmbook.tokenizer import train_hf_tokenizer  # noqa: E402

FMT = ChatFormat()
CHATS = [[{"role": "user", "content": f"What is {i} + 3?"}, {"role": "assistant", "content": str(i + 3)}]
         for i in range(5)]
CHATS[1] = [{"role": "system", "content": "Be brief."}, *CHATS[1], {"role": "user", "content": "again"},
            {"role": "assistant", "content": "sure thing"}]
PAIRS = [PreferencePair([{"role": "user", "content": f"What is {i} + 3?"}], str(i + 3), f"maybe {i} or so")
         for i in range(4)]


@pytest.fixture(scope="module")
def tok():
    return add_chat_tokens(train_hf_tokenizer(["Once upon a time there was a cat. What is 2 + 3? 5. maybe so."] * 20,
                                              300))


@pytest.fixture(scope="module")
def gpt(tok):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=2, n_head=2, n_embd=32))


def hf_twin(model, tok, tmp_path):
    """The same weights as a transformers model, and the tokenizer as a fast tokenizer with our chat template."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    to_hf(model, tmp_path / "hf")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=END)
    fast.chat_template = CHAT_TEMPLATE
    return AutoModelForCausalLM.from_pretrained(tmp_path / "hf"), fast


# ------------------------------------------------------------------------------------------------ SFT
def test_sft_batch_and_loss_equal_trl(tok, gpt, tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    hf, fast = hf_twin(gpt, tok, tmp_path)
    args = SFTConfig(output_dir=str(tmp_path / "out"), assistant_only_loss=True, report_to=[], use_cpu=True,
                     per_device_train_batch_size=len(CHATS), max_length=None)
    trainer = SFTTrainer(model=hf, args=args, train_dataset=Dataset.from_list([{"messages": c} for c in CHATS]),
                         processing_class=fast)
    rows = [trainer.train_dataset[i] for i in range(len(CHATS))]
    examples, _ = encode_chats(FMT, tok, CHATS, 64)
    assert [list(e.ids) for e in examples] == [r["input_ids"] for r in rows]  # TRL tokenized our template the same
    batch = trainer.data_collator(rows)
    hf.eval()
    with torch.no_grad():
        theirs = trainer.compute_loss(hf, batch)
        x, y = pad_batch(examples, special_tokens(tok)[END])
        ours = gpt.eval()(x, y)[1]
    assert (batch["labels"][:, 1:] == y).all()  # the same assistant-only targets, shifted
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ DPO
@pytest.mark.parametrize("loss", ["dpo", "ipo"])
def test_dpo_loss_and_gradients_equal_trl(tok, gpt, tmp_path, loss):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    hf, fast = hf_twin(gpt, tok, tmp_path)
    data = Dataset.from_list([{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                               "rejected": [{"role": "assistant", "content": p.rejected}]} for p in PAIRS])
    args = DPOConfig(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, per_device_train_batch_size=4,
                     beta=0.1, loss_type=["sigmoid" if loss == "dpo" else "ipo"], precompute_ref_log_probs=True,
                     max_length=None)
    trainer = DPOTrainer(model=hf, args=args, train_dataset=data, processing_class=fast)
    encoded = encode_pairs(FMT, tok, PAIRS, 64, 64)
    ref = torch.tensor([[-3.0 - i, -4.0 + 0.5 * i] for i in range(len(PAIRS))])  # fixed reference log-probs

    def split(e: Example):
        n = e.mask.index(1)
        return list(e.ids[:n]), list(e.ids[n:])

    rows = [{"prompt_ids": split(p.chosen)[0], "chosen_ids": split(p.chosen)[1], "rejected_ids": split(p.rejected)[1],
             "ref_chosen_logps": float(r[0]), "ref_rejected_logps": float(r[1])} for p, r in zip(encoded, ref)]
    batch = trainer.data_collator(rows)
    hf.train()
    theirs = trainer.compute_loss(hf, batch)
    theirs.backward()
    model = gpt.train()
    model.zero_grad()
    x, y = collate(list(zip(encoded, ref)), special_tokens(tok)[END])
    ours, metrics = DPOObjective(0.1, loss)(model, x, y)
    ours.backward()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    grad_theirs = hf.transformer.h[0].attn.c_attn.weight.grad.t()  # GPT-2 stores Conv1D weights transposed
    torch.testing.assert_close(model.blocks[0].attn.c_attn.weight.grad, grad_theirs, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(model.wte.weight.grad, hf.transformer.wte.weight.grad, atol=1e-6, rtol=1e-4)
    assert set(metrics) == {"reward_chosen", "reward_rejected", "margin", "accuracy"}


def test_dpo_formulas():
    c, r, rc, rr = torch.tensor([-2.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-4.0])
    losses, reward_c, reward_r = dpo_loss(c, r, rc, rr, beta=0.5)
    assert losses.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.5 * 2.0)).item())
    assert (reward_c.item(), reward_r.item()) == (0.5, -0.5)
    ipo, _, _ = dpo_loss(c, r, rc, rr, beta=0.5, loss="ipo", n_chosen=torch.tensor([2]), n_rejected=torch.tensor([4]))
    assert ipo.item() == pytest.approx((1 / 2 - (-1) / 4 - 1) ** 2)
    with pytest.raises(ValueError, match="number of response tokens"):
        dpo_loss(c, r, rc, rr, beta=0.5, loss="ipo")
    with pytest.raises(ValueError, match="not one of"):
        DPOObjective(loss="kto")


def test_sequence_logps_sum_only_the_targets():
    logits = torch.randn(2, 3, 5)
    targets = torch.tensor([[1, IGNORE, 4], [IGNORE, IGNORE, 0]])
    logps, counts = sequence_logps(logits, targets)
    lp = logits.log_softmax(-1)
    assert torch.allclose(logps, torch.stack([lp[0, 0, 1] + lp[0, 2, 4], lp[1, 2, 0]]))
    assert counts.tolist() == [2, 1]


def test_reference_logps_match_the_objective_at_start(tok, gpt):
    encoded = encode_pairs(FMT, tok, PAIRS, 64, 64)
    pad = special_tokens(tok)[END]
    ref = reference_logps(gpt, encoded, pad, batch_size=3)
    x, y = collate(list(zip(encoded, ref)), pad)
    with torch.no_grad():
        loss, metrics = DPOObjective(0.1)(gpt.eval(), x, y)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)  # policy == reference
    assert metrics["margin"].abs().item() < 1e-5


def test_reference_logps_use_the_training_precision(tok, gpt):
    """Under bf16 autocast the policy at step 0 equals a reference computed in bf16, not one computed in fp32."""
    encoded = encode_pairs(FMT, tok, PAIRS, 64, 64)
    pad = special_tokens(tok)[END]
    margins = {}
    for precision in ("fp32", "bf16"):
        x, y = collate(list(zip(encoded, reference_logps(gpt, encoded, pad, precision=precision))), pad)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            _, metrics = DPOObjective(0.1)(gpt.eval(), x, y)
        margins[precision] = (metrics["reward_chosen"].abs() + metrics["reward_rejected"].abs()).item()
    assert margins["bf16"] < 1e-6 < margins["fp32"]


# ------------------------------------------------------------------------------------------------ reward model
def test_reward_model_reads_the_last_real_token(tok, gpt):
    encoded = encode_pairs(FMT, tok, PAIRS, 64, 64)
    rm = RewardModel(gpt).eval()
    x, y = pair_batch(encoded, pad_id=0)
    with torch.no_grad():
        batched = rm(x, y["last"])
        one = rm(torch.tensor([encoded[0].rejected.ids]), torch.tensor([len(encoded[0].rejected.ids) - 1]))
    assert batched[len(PAIRS)].item() == pytest.approx(one.item(), abs=1e-5)  # padding changes nothing
    assert rm.gpt.wte.weight.data_ptr() != gpt.wte.weight.data_ptr()  # the policy is not shared
    loss, metrics = RewardObjective()(rm, x, y)
    assert loss.item() == pytest.approx(bradley_terry_loss(*batched.chunk(2)).item(), abs=1e-6)
    assert 0 <= metrics["accuracy"] <= 1


def test_reward_model_learns_a_separable_preference(tok, gpt):
    torch.manual_seed(0)
    encoded = encode_pairs(FMT, tok, PAIRS, 64, 64)
    rm = RewardModel(gpt).train()
    opt = torch.optim.AdamW(rm.parameters(), lr=3e-3)
    x, y = pair_batch(encoded, pad_id=0)
    for _ in range(30):
        loss, metrics = RewardObjective()(rm, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["accuracy"].item() == 1.0 and loss.item() < 0.3


# ------------------------------------------------------------------------------------------------ GRPO
def test_group_advantages():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv.mean(1), torch.zeros(2), atol=1e-6)
    assert (adv[1] == 0).all()  # a group where every answer is equally good teaches nothing
    assert adv[0, 0] > 0 > adv[0, 1]


def test_grpo_loss_gradient_clipping_and_kl():
    logps = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, metrics = grpo_loss(logps, logps.detach(), logps.detach(), torch.tensor([2.0]), mask, clip=0.2, kl=0.1)
    loss.backward()
    assert torch.allclose(logps.grad, torch.tensor([[-1.0, -1.0, 0.0]]))  # -A / n_tokens, padding untouched
    assert metrics["kl"].item() == 0 and metrics["clip_fraction"].item() == 0
    far = torch.tensor([[-0.5, -1.0, 0.0]], requires_grad=True)  # ratios e^0.5, e^1 > 1 + clip with A > 0: clipped
    loss, metrics = grpo_loss(far, torch.tensor([[-1.0, -2.0, 0.0]]), far.detach(), torch.tensor([1.0]), mask, 0.2, 0.0)
    loss.backward()
    assert torch.allclose(far.grad, torch.zeros_like(far)) and metrics["clip_fraction"].item() == 1
    ref = torch.tensor([[-1.5, -2.0, 0.0]])
    _, metrics = grpo_loss(logps.detach(), logps.detach(), ref, torch.tensor([0.0]), mask, 0.2, 0.1)
    x = -0.5  # log(ref / pi) on the first token; the second is equal
    assert metrics["kl"].item() == pytest.approx((torch.exp(torch.tensor(x)) - x - 1).item() / 2)


def test_grpo_log_probs_are_those_of_the_sampling_distribution(gpt):
    """Answers sampled at temperature T are scored under softmax(logits / T), and the old log-probabilities are
    computed with the training precision, so the ratio is exactly 1 before the first update."""
    from llmbook.finetune.grpo import GRPOObjective, per_token_logps

    x = torch.randint(0, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    targets = torch.randint(0, 200, (3, 12), generator=torch.Generator().manual_seed(1))
    targets[:, :6] = IGNORE
    with torch.no_grad():
        logits = gpt.eval()(x)[0]
    expected = (logits / 0.5).log_softmax(-1).gather(-1, targets.clamp_min(0)[..., None])[..., 0] * (targets != IGNORE)
    torch.testing.assert_close(per_token_logps(gpt, x, targets, temperature=0.5), expected)
    old = per_token_logps(gpt, x, targets, temperature=0.5, precision="bf16")
    y = {"targets": targets, "old_logps": old, "ref_logps": old, "advantages": torch.tensor([1.0, -1.0, 0.5]),
         "rewards": torch.ones(3)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics = GRPOObjective(clip=0.01, kl=0.1, temperature=0.5)(gpt.eval(), x, y)
    assert metrics["kl"].item() == 0 and metrics["clip_fraction"].item() == 0


def test_grpo_without_old_log_probs_is_the_on_policy_objective(gpt):
    """A rollout used for one step carries no old log-probabilities: the objective uses the policy's own (detached),
    which is what a separate forward of the same weights would give, loss and gradients alike."""
    from llmbook.finetune.grpo import GRPOObjective, per_token_logps

    x = torch.randint(0, 200, (4, 10), generator=torch.Generator().manual_seed(2))
    targets = torch.randint(0, 200, (4, 10), generator=torch.Generator().manual_seed(3))
    targets[:, :4] = IGNORE
    ref = per_token_logps(gpt, x, targets) - 0.1
    y = {"targets": targets, "ref_logps": ref, "advantages": torch.tensor([1.0, -1.0, 0.5, 0.0]),
         "rewards": torch.ones(4)}
    grads = []
    for batch in (y, {**y, "old_logps": per_token_logps(gpt, x, targets)}):
        gpt.zero_grad()
        loss, metrics = GRPOObjective(0.2, 0.1)(gpt.train(), x, batch)
        loss.backward()
        grads.append((loss.detach(), gpt.blocks[0].attn.c_attn.weight.grad.clone(), metrics["kl"]))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


def test_grpo_steps_make_a_tiny_policy_prefer_the_rewarded_token():
    from llmbook.finetune.evaluate import complete

    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=16))
    ref = GPT(policy.config)
    ref.load_state_dict(policy.state_dict())
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    prompt = [[1, 2]] * 16

    def p_target():
        with torch.no_grad():
            return policy(torch.tensor([[1, 2]]))[0][0, -1].softmax(-1)[5].item()

    before = p_target()
    for _ in range(15):
        answers = complete(policy, prompt, 1, stop_ids=[], temperature=1.0, generator=gen)
        rewards = torch.tensor([float(a[0] == 5) for a in answers]).view(2, 8)
        x, targets = pad_batch([Example((1, 2, a[0]), (0, 0, 1)) for a in answers], 0)
        logps = token_logps(policy(x)[0], targets)
        loss, _ = grpo_loss(logps, logps.detach(), token_logps(ref(x)[0], targets).detach(),
                            group_advantages(rewards).flatten(), (targets != IGNORE).float(), 0.2, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert p_target() > before + 0.2
