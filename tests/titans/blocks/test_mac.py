"""MACBlock: the paper's order of operations (eqs. 21-25), recorded through injected components."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from memory_blocks.attention import SegmentAttention
from memory_blocks.layers.norm import RMSNorm
from memory_blocks.neural_memory import NeuralMemory
from memory_blocks.persistent import PersistentMemory
from titans import MACBlock, ProductGate, TitansConfig
from titans.blocks.mac import MemoryTokenGain
from titans.model import TitansLM

DIM, SEGMENT, N_L = 8, 4, 2


class RecordingMemory(NeuralMemory):
    def __init__(self, log: list, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    def retrieve(self, x, state=None):
        out = super().retrieve(x, state)
        self.log.append(dict(op="retrieve", x=x, state=state, out=out))
        return out

    def forward(self, x, state=None):
        out, new = super().forward(x, state)
        self.log.append(dict(op="memorize", x=x, state=state, out=out, new=new))
        return out, new


class RecordingAttention(SegmentAttention):
    def __init__(self, log: list, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    def forward(self, x, *, memory=None, persistent=None):
        out = super().forward(x, memory=memory, persistent=persistent)
        self.log.append(dict(op="attend", x=x, memory=memory, persistent=persistent, out=out))
        return out


class RecordingGate(ProductGate):
    def __init__(self, log: list, dim: int) -> None:
        super().__init__(dim)
        self.log = log

    def forward(self, y, m):
        out = super().forward(y, m)
        self.log.append(dict(op="combine", y=y, m=m, out=out))
        return out


class Zero(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def recording_block(
    log: list, device: torch.device, num_memory_tokens: int = N_L, *, persistent: bool = True,
    write: str = "attention", projection: nn.Module | None = None,
) -> MACBlock:
    torch.manual_seed(0)
    block = MACBlock(
        attention=RecordingAttention(log, DIM, 2, segment=SEGMENT, memory_per_segment=max(num_memory_tokens, 1)),
        # No convolution: a read of the memory is then a function of the weights and the token.
        memory=RecordingMemory(log, DIM, heads=2, chunk_size=3, conv_kernel=0),
        persistent=PersistentMemory(2, DIM) if persistent else None,
        combine=RecordingGate(log, DIM),
        norm=nn.Identity(),
        feedforward=Zero(),
        ffn_norm=nn.Identity(),
        num_memory_tokens=num_memory_tokens,
        write=write,
        retrieve_projection=projection,
    )
    return block.to(device=device, dtype=torch.float64)


def test_retrieve_attend_store_read_in_the_papers_order(device):
    log: list = []
    block = recording_block(log, device)
    x = torch.randn(2, 10, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).to(device)
    out, state = block(x)
    segments = [(0, 4), (4, 8), (8, 10)]
    assert [e["op"] for e in log] == ["retrieve", "attend", "memorize", "combine"] * len(segments)
    previous = None
    for n, (a, b) in enumerate(segments):
        retrieve, attend, memorize, combine = log[4 * n : 4 * n + 4]
        # eq. 21: the segment's first N_l queries read the memory as it stood before the segment.
        torch.testing.assert_close(retrieve["x"], x[:, a : a + N_L])
        if previous is None:
            assert retrieve["state"] is None
        else:
            assert retrieve["state"].memory is previous["new"].memory
        # eq. 22: attention over [persistent | memory tokens | segment].
        torch.testing.assert_close(attend["x"], x[:, a:b])
        assert attend["memory"] is retrieve["out"]
        torch.testing.assert_close(attend["persistent"], block.persistent.tokens(2))
        # eqs. 23-24: the memory then learns from the attention output y...
        assert torch.equal(memorize["x"], attend["out"])
        assert (memorize["state"] is None) if previous is None else (memorize["state"] is previous["new"])
        # ... and is read after its own write: the last token's read equals a plain read of the
        # memory that has stored the segment.
        read_after = NeuralMemory.retrieve(block.memory, attend["out"][:, -1:], memorize["new"])
        torch.testing.assert_close(memorize["out"][:, -1:], read_after)
        # eq. 25: o = y (x) M*(y), added to the residual.
        assert torch.equal(combine["y"], attend["out"]) and combine["m"] is memorize["out"]
        torch.testing.assert_close(out[:, a:b], x[:, a:b] + attend["out"] * memorize["out"])
        previous = memorize
    assert state.pending.shape == (2, 2, DIM)
    assert state.segment_memory is log[6]["new"]  # M after segment 1; segment 2 is unfinished


def test_streaming_writes_each_token_once(device):
    # Fed one token at a time, the memory is written with exactly the new token's y, while
    # retrieval keeps reading the segment-start memory.
    log: list = []
    block = recording_block(log, device)
    x = torch.randn(1, 6, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    state = None
    for t in range(6):
        _, state = block(x[:, t : t + 1], state)
    writes = [e for e in log if e["op"] == "memorize"]
    assert [w["x"].shape[1] for w in writes] == [1] * 6
    reads = [e for e in log if e["op"] == "retrieve"]
    assert reads[3]["state"] is None  # token 3 still in segment 0
    assert reads[4]["state"].memory is writes[3]["new"].memory  # token 4 starts segment 1


def test_without_memory_tokens_attention_sees_no_memory(device):
    log: list = []
    block = recording_block(log, device, num_memory_tokens=0)
    block(torch.randn(1, 5, DIM, dtype=torch.float64, device=device))
    assert [e["op"] for e in log] == ["attend", "memorize", "combine"] * 2
    assert all(e["memory"] is None for e in log if e["op"] == "attend")


def test_rejects_inconsistent_components():
    log: list = []
    memory = RecordingMemory(log, DIM, heads=2, chunk_size=3)
    common = dict(persistent=None, norm=nn.Identity(), feedforward=Zero(), ffn_norm=nn.Identity())
    with pytest.raises(ValueError, match="num_memory_tokens"):
        MACBlock(attention=SegmentAttention(DIM, 2, segment=4), memory=memory, combine=ProductGate(DIM),
                 num_memory_tokens=5, **common)
    with pytest.raises(ValueError, match="memory_visibility"):
        MACBlock(attention=SegmentAttention(DIM, 2, segment=4, memory_per_segment=2, memory_visibility="all"),
                 memory=memory, combine=ProductGate(DIM), num_memory_tokens=2, **common)
    with pytest.raises(ValueError, match="combine"):
        MACBlock(attention=SegmentAttention(DIM, 2, segment=4, memory_per_segment=2), memory=memory,
                 combine=None, num_memory_tokens=2, **common)
    with pytest.raises(ValueError, match="need a memory"):
        MACBlock(attention=SegmentAttention(DIM, 2, segment=4, memory_per_segment=2), memory=None,
                 combine=None, num_memory_tokens=2, **common)


def input_writing_block(log: list, device: torch.device, projection: nn.Module | None = None) -> MACBlock:
    return recording_block(log, device, persistent=False, write="input", projection=projection)


def test_input_writing_memory_learns_the_segment_inputs(device):
    # write="input": the memory writes (and reads its output with) the segment's normalised
    # inputs; the attention output only enters through the combine gate.
    log: list = []
    block = input_writing_block(log, device)
    x = torch.randn(2, 10, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(device)
    out, _ = block(x)
    memorize = [e for e in log if e["op"] == "memorize"]
    combine = [e for e in log if e["op"] == "combine"]
    attend = [e for e in log if e["op"] == "attend"]
    for (a, b), write, gate, att in zip([(0, 4), (4, 8), (8, 10)], memorize, combine, attend):
        assert torch.equal(write["x"], x[:, a:b])
        assert torch.equal(gate["y"], att["out"]) and gate["m"] is write["out"]
        torch.testing.assert_close(out[:, a:b], x[:, a:b] + att["out"] * write["out"])


def test_a_separate_retrieval_projection_forms_the_retrieval_queries(device):
    log: list = []
    projection = nn.Linear(DIM, DIM, bias=False).to(device=device, dtype=torch.float64)
    block = input_writing_block(log, device, projection)
    x = torch.randn(1, 8, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).to(device)
    block(x)
    retrieves = [e for e in log if e["op"] == "retrieve"]
    for start, read in zip((0, 4), retrieves):
        torch.testing.assert_close(read["x"], projection(x[:, start : start + N_L]))
    # the projection takes part in the output, so training shapes it
    out, _ = block(x)
    out.sum().backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0


def test_rejects_unknown_write_and_projection_without_memory_tokens():
    log: list = []
    memory = RecordingMemory(log, DIM, heads=2, chunk_size=3)
    common = dict(persistent=None, norm=nn.Identity(), feedforward=Zero(), ffn_norm=nn.Identity(),
                  combine=ProductGate(DIM))
    with pytest.raises(ValueError, match="write must be one of"):
        MACBlock(attention=SegmentAttention(DIM, 2, segment=4), memory=memory, num_memory_tokens=4,
                 write="output", **common)
    with pytest.raises(ValueError, match="retrieve_projection needs memory tokens"):
        MACBlock(attention=SegmentAttention(DIM, 2, segment=4), memory=memory, num_memory_tokens=0,
                 retrieve_projection=nn.Identity(), **common)


def test_a_memory_norm_scales_the_memory_tokens_the_attention_sees(device):
    # memory_norm: the retrievals are normalised before the attention.
    log: list = []
    block = recording_block(log, device, persistent=False, write="input")
    block.memory_norm = RMSNorm(DIM).to(device=device, dtype=torch.float64)
    x = torch.randn(2, 8, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).to(device)
    out, _ = block(x)
    retrieves = [e for e in log if e["op"] == "retrieve"]
    attends = [e for e in log if e["op"] == "attend"]
    for read, attend in zip(retrieves, attends):
        torch.testing.assert_close(attend["memory"], block.memory_norm(read["out"]))
        rms = attend["memory"].pow(2).mean(-1).sqrt()
        torch.testing.assert_close(rms, torch.ones_like(rms), rtol=1e-4, atol=1e-4)
        raw = read["out"].pow(2).mean(-1).sqrt()
        assert not torch.allclose(raw, torch.ones_like(raw), atol=1e-2)  # the norm did change them
    out.sum().backward()
    assert block.memory_norm.weight.grad is not None and block.memory_norm.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["rms", "rms_zero", "gain"])
def test_the_memory_norm_option_builds_and_streams_like_one_call(norm):
    config = TitansConfig(variant="mac", vocab_size=32, dim=16, depth=2, heads=2, ffn_hidden=32, window=4,
                          segment_len=4, num_persistent=2, chunk_size=2, memory_model="linear",
                          mac_memory_norm=norm)
    torch.manual_seed(0)
    model = TitansLM(config).double()
    gains = [block.memory_norm.weight for block in model.blocks]
    expected = 0.0 if norm == "rms_zero" else 1.0
    assert all(torch.equal(g, torch.full_like(g, expected)) for g in gains)
    with torch.no_grad():  # open the zero gains, so that the tokens reach the attention
        for g in gains:
            g.uniform_(0.5, 1.5)
    ids = torch.randint(0, 32, (2, 11), generator=torch.Generator().manual_seed(5))
    whole = model(ids).logits
    state, pieces = None, []
    for a, b in ((0, 3), (3, 4), (4, 9), (9, 11)):
        out = model(ids[:, a:b], state=state)
        pieces.append(out.logits)
        state = out.state
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole)
    # without memory tokens there is nothing to normalise
    none = TitansLM(dataclasses.replace(config, num_memory_tokens=0))
    assert all(block.memory_norm is None for block in none.blocks)


def test_rejects_an_unknown_memory_norm_and_one_without_memory_tokens():
    with pytest.raises(ValueError, match="mac_memory_norm"):
        TitansConfig(variant="mac", mac_memory_norm="layer")
    log: list = []
    memory = RecordingMemory(log, DIM, heads=2, chunk_size=3)
    with pytest.raises(ValueError, match="memory_norm needs memory tokens"):
        MACBlock(attention=SegmentAttention(DIM, 2, segment=4), memory=memory, num_memory_tokens=0,
                 persistent=None, norm=nn.Identity(), feedforward=Zero(), ffn_norm=nn.Identity(),
                 combine=ProductGate(DIM), memory_norm=RMSNorm(DIM))


def test_the_gain_scales_the_retrievals_without_normalising_them(device):
    log: list = []
    block = recording_block(log, device, persistent=False, write="input")
    block.memory_norm = MemoryTokenGain(DIM, init=2.0).to(device=device, dtype=torch.float64)
    x = torch.randn(2, 8, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(6)).to(device)
    block(x)
    retrieves = [e for e in log if e["op"] == "retrieve"]
    attends = [e for e in log if e["op"] == "attend"]
    assert len(retrieves) == 2
    for read, attend in zip(retrieves, attends):
        torch.testing.assert_close(attend["memory"], 2.0 * read["out"])  # magnitudes kept, only scaled


def test_old_configuration_documents_load_without_the_memory_norm():
    import json

    doc = json.loads(TitansConfig(variant="mac", mac_memory_norm="rms").to_json())
    del doc["config"]["mac_memory_norm"]
    assert TitansConfig.from_json(json.dumps(doc)).mac_memory_norm == "none"


def test_mac_forgetting_has_a_ceiling_and_old_documents_keep_theirs():
    import json

    from memory_blocks import NeuralMemory
    from titans import TitansLM

    def gate(config):
        layer = next(m for m in TitansLM(config).modules() if isinstance(m, NeuralMemory))
        return layer.decay_gate.init, layer.decay_gate.max_value

    small = dict(vocab_size=16, dim=16, depth=1, heads=2, segment_len=4, window=4, chunk_size=2)
    assert gate(TitansConfig(variant="mac", **small)) == (1e-4, 1e-3)  # MAC's default ceiling
    for variant in ("mag", "mal", "lmm"):  # the other variants' (round 6)
        assert gate(TitansConfig(variant=variant, **small)) == (1e-4, 1e-3)
    assert gate(TitansConfig(variant="mac", decay_gate_max=1.0, **small)) == (0.01, 1.0)
    assert TitansConfig(variant="mac", decay_gate=None).resolved_decay_gate_max is None
    # a MIRAS retention keeps the full range: only the forgetting holds its accumulator in scale
    assert gate(TitansConfig(variant="mac", retention="kl", **small)) == (0.01, 1.0)
    assert gate(TitansConfig(variant="mac", retention="kl", decay_gate_max=1e-3, **small)) == (1e-4, 1e-3)
    # A MAC document written before the ceiling existed rebuilds the unbounded gate it was trained with.
    doc = json.loads(TitansConfig(variant="mac", **small).to_json())
    del doc["config"]["decay_gate_max"]
    old = TitansConfig.from_json(json.dumps(doc))
    assert old.decay_gate_max == 1.0 and gate(old) == (0.01, 1.0)
    for gate_value in (None, 0.05):  # an old MAC without a learned forgetting gate loads as it was
        doc = json.loads(TitansConfig(variant="mac", decay_gate=gate_value).to_json())
        del doc["config"]["decay_gate_max"]
        loaded = TitansConfig.from_json(json.dumps(doc))
        assert (loaded.decay_gate, loaded.decay_gate_max) == (gate_value, None)
    transformer = json.loads(TitansConfig(variant="transformer").to_json())
    del transformer["config"]["decay_gate_max"], transformer["version"]
    assert TitansConfig.from_json(json.dumps(transformer)).decay_gate_max is None


@pytest.mark.parametrize("variant", ["mag", "mal", "lmm"])
def test_documents_written_before_the_variants_ceiling_keep_their_unbounded_gate(variant):
    """Version 1 documents (no ``"version"``: before MAG's, MAL's and LMM's default ceiling) with
    ``decay_gate_max`` ``None`` or absent rebuild the gate they were trained with; version 2
    ones mean today's default; a version this titans does not know is refused."""
    import json

    from titans.config import CONFIG_VERSION

    doc = json.loads(TitansConfig(variant=variant).to_json())
    assert doc["version"] == CONFIG_VERSION == 2
    assert TitansConfig.from_json(json.dumps(doc)).resolved_decay_gate_max == 1e-3
    del doc["version"]
    assert TitansConfig.from_json(json.dumps(doc)).decay_gate_max == 1.0
    del doc["config"]["decay_gate_max"]
    assert TitansConfig.from_json(json.dumps(doc)).decay_gate_max == 1.0
    for kept in (dict(decay_gate_max=0.05), dict(decay_gate=None), dict(decay_gate=0.1)):
        old = json.loads(TitansConfig(variant=variant, **kept).to_json())
        del old["version"]
        assert TitansConfig.from_json(json.dumps(old)) == TitansConfig(variant=variant, **kept)
    mac = json.loads(TitansConfig(variant="mac").to_json())
    del mac["version"]  # MAC's ceiling predates the version: None already meant it
    assert TitansConfig.from_json(json.dumps(mac)).resolved_decay_gate_max == 1e-3
    for bad in (3, 0, "2", True, None, 1.0):
        doc = json.loads(TitansConfig(variant=variant).to_json())
        doc["version"] = bad
        with pytest.raises(ValueError, match=r"^TitansConfig\.from_json: 'version' must be an integer from 1 to 2"):
            TitansConfig.from_json(json.dumps(doc))
