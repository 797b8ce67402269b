"""Packing: shard format, manifest, and the loader's determinism, resumption and rank sharding."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmbook.data.pack import TokenLoader, is_val_document, read_manifest, token_dtype, write_shards

EOS = 255


def byte_encode(text: str) -> list[int]:
    """Toy tokenizer: UTF-8 bytes below the EOS id (enough to test packing)."""
    return [b % EOS for b in text.encode("utf-8")]


def corpus(n: int = 200, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "ζeta", "東京"]
    return [
        {"text": " ".join(rng.choice(words, size=int(rng.integers(3, 40)))), "source": f"s{i % 3}"}
        for i in range(n)
    ]


@pytest.fixture()
def shards(tmp_path):
    docs = corpus()
    manifest = write_shards(docs, byte_encode, tmp_path / "shards", eos_id=EOS, shard_tokens=1000, val_fraction=0.1,
                            tokenizer_hash="abc", progress=False)
    return tmp_path / "shards", docs, manifest


@pytest.fixture(scope="module")
def packed_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    write_shards(corpus(), byte_encode, out, eos_id=EOS, shard_tokens=700, val_fraction=0.1, progress=False)
    return out


def test_dtype_rule():
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32
    with pytest.raises(ValueError, match="vocab_size"):
        token_dtype(0)


def test_shards_hold_documents_with_eos_in_order(shards):
    out, docs, manifest = shards
    assert manifest["dtype"] == "uint16"
    assert manifest["tokenizer_hash"] == "abc" and manifest["max_token_id"] == EOS
    assert write_shards(["ab"], lambda t: [5, 6], out / "eos0", eos_id=0, progress=False)["dtype"] == "uint16"
    assert manifest["documents"] == len(docs)
    expected = {"train": [], "val": []}
    for i, d in enumerate(docs):
        expected["val" if is_val_document(i, 0.1) else "train"] += byte_encode(d["text"]) + [EOS]
    for split in ("train", "val"):
        info = manifest["splits"][split]
        stream = np.concatenate([np.fromfile(out / s["file"], dtype=np.uint16) for s in info["shards"]])
        assert stream.tolist() == expected[split]
        assert info["tokens"] == len(expected[split])
        assert all(s["tokens"] == 1000 for s in info["shards"][:-1])
        assert info["documents"] == int((stream == EOS).sum())
    assert manifest["splits"]["val"]["documents"] == 20  # exactly 10 % of 200, evenly spaced
    assert sum(v["documents"] for v in manifest["sources"].values()) == len(docs)
    assert sum(v["tokens"] for v in manifest["sources"].values()) == manifest["tokens"]
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not list(out.glob("*.tmp"))


def test_uint32_when_vocab_is_large(tmp_path):
    with pytest.raises(ValueError, match="pass vocab_size"):
        write_shards(["hello"], lambda t: [70000, 1], tmp_path, eos_id=3, progress=False)
    manifest = write_shards(["hello", "world"], lambda t: [70000, 1], tmp_path, eos_id=70001, val_fraction=0.0,
                            vocab_size=70002, progress=False)
    assert manifest["dtype"] == "uint32"
    assert np.fromfile(tmp_path / "train_00000.bin", dtype=np.uint32).tolist() == [70000, 1, 70001] * 2


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        write_shards(["", ""], byte_encode, tmp_path, eos_id=EOS, progress=False)
    with pytest.raises(ValueError, match="does not fit vocab_size 256"):
        write_shards(["x"], lambda t: [300], tmp_path, eos_id=EOS, vocab_size=256, progress=False)
    with pytest.raises(ValueError, match="'text'"):
        write_shards([{"body": "x"}], byte_encode, tmp_path, eos_id=EOS, progress=False)
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(tmp_path / "nothing")


def test_empty_documents_are_counted(tmp_path):
    manifest = write_shards(["a", "", "b"], byte_encode, tmp_path, eos_id=EOS, val_fraction=0.0, progress=False)
    assert manifest["skipped_empty"] == 1 and manifest["documents"] == 2


def test_batches_are_shifted_windows_of_the_stream(shards):
    out, _, manifest = shards
    loader = TokenLoader(out, batch_size=4, block_size=16, seed=3)
    stream = np.concatenate(
        [np.fromfile(out / s["file"], dtype=np.uint16) for s in manifest["splits"]["train"]["shards"]]
    ).astype(np.int64)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x.numpy(), y.numpy()):
        starts = [i for i in range(len(stream) - 16) if np.array_equal(stream[i : i + 16], row_x)]
        assert any(np.array_equal(stream[s + 1 : s + 17], row_y) for s in starts)


def test_deterministic_for_a_seed_and_different_across_seeds(shards):
    out = shards[0]
    a = [TokenLoader(out, 4, 16, seed=1).next_batch()[0] for _ in range(2)]
    assert torch.equal(a[0], a[1])
    assert not torch.equal(a[0], TokenLoader(out, 4, 16, seed=2).next_batch()[0])


def test_resume_yields_the_same_batches_across_epochs(shards):
    out = shards[0]
    full = TokenLoader(out, 4, 16, seed=0)
    n = full.steps_per_epoch * 2 + 3  # cross two epoch boundaries
    reference = [full.next_batch() for _ in range(n)]
    first = TokenLoader(out, 4, 16, seed=0)
    for _ in range(5):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))  # the state survives a JSON round trip
    resumed = TokenLoader(out, 4, 16, seed=0)
    resumed.load_state_dict(state)
    for x_ref, y_ref in reference[5:]:
        x, y = resumed.next_batch()
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_resume_refuses_other_settings(shards):
    out = shards[0]
    state = TokenLoader(out, 4, 16, seed=0).state_dict()
    with pytest.raises(ValueError, match="batch_size"):
        TokenLoader(out, 2, 16, seed=0).load_state_dict(state)


def test_ranks_get_disjoint_windows_covering_the_global_batch(shards):
    out = shards[0]
    single = TokenLoader(out, 8, 16, seed=5)
    ranks = [TokenLoader(out, 4, 16, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        parts = [r.next_batch()[0] for r in ranks]
        both = torch.cat(parts)
        assert torch.equal(both, single.next_batch()[0])  # rank slices tile the global batch
        rows0 = {tuple(r) for r in parts[0].tolist()}
        assert not rows0 & {tuple(r) for r in parts[1].tolist()}


def test_epoch_visits_each_window_once(tmp_path):
    # Every token id is unique, so a window is identified by its first token.
    write_shards([str(i) for i in range(100)], lambda t: list(range(int(t) * 50, int(t) * 50 + 49)), tmp_path,
                 eos_id=10_000, val_fraction=0.0, progress=False)
    loader = TokenLoader(tmp_path, 2, 8, seed=0)
    steps = loader.steps_per_epoch
    firsts = [row[0] for _ in range(steps) for row in loader.next_batch()[0].tolist()]
    assert len(firsts) == len(set(firsts)) == steps * 2
    assert steps == (5000 - 1 - loader._offset) // 8 // 2
    assert loader.epoch == 0
    loader.next_batch()
    assert loader.epoch == 1 and loader.step == 1


def test_val_split_and_too_small(shards):
    out = shards[0]
    x, _ = TokenLoader(out, 2, 8, split="val").next_batch()
    assert x.shape == (2, 8)
    with pytest.raises(ValueError, match="too few"):
        TokenLoader(out, 64, 512, split="val")
    with pytest.raises(ValueError, match="rank"):
        TokenLoader(out, 2, 8, rank=2, world_size=2)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(batch=st.integers(1, 4), block=st.integers(4, 32), world=st.integers(1, 3), stop=st.integers(0, 60),
       seed=st.integers(0, 3))
def test_resume_property(packed_dir, batch, block, world, stop, seed):
    """For any settings and stopping point, every rank resumes with exactly the batches it would have seen."""
    for rank in range(world):
        make = lambda: TokenLoader(packed_dir, batch, block, seed=seed, rank=rank, world_size=world)
        full = make()
        reference = [full.next_batch()[0] for _ in range(stop + 3)]
        first = make()
        for _ in range(stop):
            first.next_batch()
        resumed = make()
        resumed.load_state_dict(first.state_dict())
        assert all(torch.equal(resumed.next_batch()[0], ref) for ref in reference[stop:])


def test_failed_write_keeps_the_previous_shard_set(tmp_path):
    out = tmp_path / "shards"
    old = write_shards(corpus(50), byte_encode, out, eos_id=EOS, shard_tokens=100, val_fraction=0.1, progress=False)
    batch = TokenLoader(out, 2, 8, seed=0).next_batch()[0]

    def explode(text):
        if text == "bad":
            raise RuntimeError("tokenizer crashed")
        return byte_encode(text)

    with pytest.raises(RuntimeError):  # fails after several new shards were written
        write_shards(["fine"] * 50 + ["bad"], explode, out, eos_id=EOS, shard_tokens=16, progress=False)
    assert read_manifest(out) == old  # the previous set is intact and loadable
    assert torch.equal(TokenLoader(out, 2, 8, seed=0).next_batch()[0], batch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]  # no temporary folder left behind
    new = write_shards(["fine"] * 50, byte_encode, out, eos_id=EOS, shard_tokens=16, progress=False)
    assert read_manifest(out) == new and new["documents"] == 50
    names = {s["file"] for split in new["splits"].values() for s in split["shards"]}
    assert {p.name for p in out.iterdir()} == names | {"manifest.json"}  # no stale shard of the old set


def test_rewrite_keeps_the_folders_permissions_and_changes_made_while_tokenizing(tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    out.chmod(0o750)
    (out / "notes.txt").write_text("old")

    def encode(text):  # the user saves a new version of a file in the folder while the shards are written
        if text == "doc 3":
            tmp = out / "notes.txt.new"
            tmp.write_text("new")
            tmp.replace(out / "notes.txt")
        return byte_encode(text)

    write_shards([f"doc {i}" for i in range(6)], encode, out, eos_id=EOS, progress=False)
    assert (out / "notes.txt").read_text() == "new"
    assert out.stat().st_mode & 0o777 == 0o750
    umask = os.umask(0)
    os.umask(umask)
    write_shards(["doc"], byte_encode, tmp_path / "new", eos_id=EOS, progress=False)
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir makes it, not mkdtemp's 0700


def test_rewrite_keeps_other_files_of_the_folder(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.txt").write_text("mine")
    write_shards(["doc one"] * 3, byte_encode, tmp_path, eos_id=EOS, shard_tokens=4, progress=False)
    write_shards(["doc two"], byte_encode, tmp_path, eos_id=EOS, progress=False)
    assert (tmp_path / "tokenizer.json").read_text() == "{}" and (tmp_path / "sub" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "sub", "tokenizer.json", "train_00000.bin"]
