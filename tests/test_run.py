"""model.run: the one chunk loop. Chunking, records, snapshots and every intervention, each against
a computation done by hand with the step API (forward_stream) or from the residual stream."""
import itertools

import numpy as np
import pytest
import torch

from model import RECORDABLE, MambaConfig, MambaLM, run, trace
from model.interventions import AblateSSM, ClampDelta, PatchState, ZeroState
from model.run import chunks

L = 45


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return MambaLM(MambaConfig()).eval()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 17, (2, L), generator=torch.Generator().manual_seed(5))      # [2, L]


@pytest.fixture(autouse=True)
def no_grad():
    """lm(tokens) streams through run() only without gradients (with them it is one training pass)."""
    with torch.no_grad():
        yield


def close(a, b, tol=1e-5):
    """max |a - b| within tol of max |b|: the same function, cut into chunks differently."""
    return (a.double() - b.double()).abs().max() <= tol * b.double().abs().max().clamp_min(1e-30)


def stream(lm, tokens, cuts, edit=lambda t, states: states):
    """forward_stream over the spans between cuts, edit(t, states) applied before step t; -> logits, states."""
    bounds = [0, *cuts, tokens.shape[1]]
    states, logits = None, []
    for s, e in zip(bounds[:-1], bounds[1:]):
        states = edit(s, states) if s > 0 else states
        lg, states = lm.forward_stream(tokens[:, s:e], states)
        logits.append(lg)
    return torch.cat(logits, 1), states


def test_chunks_cover_the_sequence_and_cut_where_asked():
    assert list(chunks(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(chunks(10, 4, cuts=[3, 0, 10, 12, 3])) == [(0, 3), (3, 4), (4, 8), (8, 10)]
    assert list(chunks(3, 1)) == [(0, 1), (1, 2), (2, 3)]


def test_without_interventions_it_is_lm_and_trace_bit_for_bit(lm, tokens):
    res = run(lm, tokens)
    assert res.records is None and res.snapshots == {}
    with torch.enable_grad():
        assert not run(lm, tokens).logits.requires_grad              # run() never builds a graph
    one, states, _ = lm.forward_chunk(tokens)
    assert torch.equal(res.logits, lm(tokens)) and torch.equal(res.logits, one)
    assert all(torch.equal(a.ssm, b.ssm) and torch.equal(a.conv, b.conv) for a, b in zip(res.final_states, states))
    assert torch.equal(run(lm, tokens, chunk_len=16).logits, lm(tokens, chunk_len=16))
    full = run(lm, tokens[:1], include=RECORDABLE, states=True, chunk_len=16)
    tr = trace(lm, tokens[0], full_states=True, chunk_len=16)
    assert np.array_equal(tr.logits, full.logits[0].numpy())
    for lt, rec in zip(tr.layers, full.records):
        assert set(rec) == {*RECORDABLE, "states"}
        for name in (*RECORDABLE, "states"):
            assert np.array_equal(getattr(lt, name), rec[name][0].numpy()), name


@pytest.mark.parametrize("chunk_len", [1, 2, 3, 7, L, 64])
@pytest.mark.parametrize("num_last_tokens", [0, 1, 5, L, 60])
def test_any_chunking_equals_one_pass(lm, tokens, chunk_len, num_last_tokens):
    include = ("delta", "state_norm", "resid_post")
    one = run(lm, tokens, include=include, num_last_tokens=num_last_tokens, chunk_len=L)    # one chunk
    res = run(lm, tokens, include=include, num_last_tokens=num_last_tokens, chunk_len=chunk_len)
    assert res.logits.shape == (2, min(num_last_tokens or L, L), 17)
    assert close(res.logits, one.logits)
    plain = run(lm, tokens, num_last_tokens=num_last_tokens, chunk_len=chunk_len).logits
    assert close(plain, one.logits)
    assert torch.equal(plain, lm(tokens, num_last_tokens=num_last_tokens, chunk_len=chunk_len))
    for a, b in zip(res.records, one.records):
        assert set(a) == set(include)
        for q in include:
            assert a[q].shape[:2] == (2, L) and close(a[q], b[q]), q
    for a, b in zip(res.final_states, one.final_states):
        assert close(a.ssm, b.ssm) and close(a.conv, b.conv)


def test_every_include_subset_records_the_same_values(lm, tokens):
    """Δ, the norm and the pre-gate output are computed only when named (softplus and gate move into
    the scan otherwise): neither the values nor the logits may depend on what else was asked for."""
    full = run(lm, tokens, include=RECORDABLE, chunk_len=16)
    for k in range(1, len(RECORDABLE) + 1):
        for subset in itertools.combinations(RECORDABLE, k):
            part = run(lm, tokens, include=subset, chunk_len=16)
            assert close(part.logits, full.logits), subset
            for a, b in zip(part.records, full.records):
                assert set(a) == set(subset)
                for q in subset:
                    assert close(a[q], b[q]), (subset, q)
    only_states = run(lm, tokens, states=True, chunk_len=16)
    for a, b in zip(only_states.records, full.records):
        assert set(a) == {"states"} and a["states"].shape == (2, L, 128, 16)
        assert close(torch.linalg.vector_norm(a["states"], dim=-1), b["state_norm"])


def test_snapshots_are_the_states_of_a_stream_split_there(lm, tokens):
    times = [0, 7, 20, L - 1]
    res = run(lm, tokens, snapshots=times, chunk_len=16)
    assert sorted(res.snapshots) == times
    for t in times:
        _, states = stream(lm, tokens[:, :t + 1], [])
        for a, b in zip(res.snapshots[t], states):
            assert close(a.ssm, b.ssm) and close(a.conv, b.conv), t
    assert res.snapshots[L - 1] is not res.final_states
    assert all(torch.equal(a.ssm, b.ssm) for a, b in zip(res.snapshots[L - 1], res.final_states))
    assert close(res.logits, run(lm, tokens).logits)


def test_a_run_continued_from_its_snapshot_is_the_uninterrupted_run(lm, tokens):
    full = run(lm, tokens, snapshots=[19], include=("delta",))
    rest = run(lm, tokens[:, 20:], initial_states=full.snapshots[19], include=("delta",))
    assert close(rest.logits, full.logits[:, 20:])
    assert close(rest.records[1]["delta"], full.records[1]["delta"][:, 20:])
    with pytest.raises(ValueError, match="one LayerState per layer"):
        run(lm, tokens[:1, 20:], initial_states=full.snapshots[19])
    with pytest.raises(ValueError, match="PatchState runs its source from step 0"):
        run(lm, tokens[:, 20:], [PatchState(0, [0], 3, tokens)], initial_states=full.snapshots[19])


def test_a_batch_one_state_repeated_continues_every_row_alike(lm, tokens):
    one = run(lm, tokens[:1, :20]).final_states
    rows = [s.repeat(3) for s in one]
    assert all(r.ssm.shape[0] == 3 and r.ssm.data_ptr() != s.ssm.data_ptr() for r, s in zip(rows, one))
    rest = run(lm, tokens[:1, 20:].expand(3, -1), initial_states=rows)
    full = run(lm, tokens[:1])
    assert all(close(rest.logits[i], full.logits[0, 20:]) for i in range(3))
    with pytest.raises(ValueError, match="batch-1 state, got batch 3"):
        rows[0].repeat(2)


def test_a_snapshot_keeps_its_values_when_the_state_is_edited_later(lm, tokens):
    clean = run(lm, tokens, snapshots=[20])
    edited = run(lm, tokens, [ZeroState(1, list(range(128)), t=21)], snapshots=[20, 21])
    assert torch.equal(edited.snapshots[20][1].ssm, clean.snapshots[20][1].ssm)
    assert edited.snapshots[20][1].ssm.abs().max() > 0


def test_zero_state_is_the_stream_zeroed_by_hand(lm, tokens):
    t, ch = 23, [0, 5, 9]

    def zero(s, states):
        states[1].ssm = states[1].ssm.clone()
        states[1].ssm[:, ch] = 0.0
        return states

    expected, _ = stream(lm, tokens, [t], zero)
    got = run(lm, tokens, [ZeroState(1, ch, t=t)]).logits
    assert torch.equal(got, expected)
    clean = lm(tokens)
    assert torch.equal(got[:, :t], clean[:, :t]) and not torch.equal(got[:, t:], clean[:, t:])
    assert torch.equal(run(lm, tokens, [ZeroState(1, ch, t=0)]).logits, clean)     # h before step 0 is 0


@pytest.mark.parametrize("batched_source", [False, True])
def test_patch_state_is_the_stream_patched_by_hand(lm, tokens, batched_source):
    t, ch = 30, [1, 2, 64]
    g = torch.Generator().manual_seed(9)
    source = torch.randint(0, 17, (2, 40) if batched_source else (40,), generator=g)
    src2 = source if batched_source else source[None].expand(2, -1)
    _, src_states = stream(lm, src2[:, :t], [])

    def patch(s, states):
        states[0].ssm = states[0].ssm.clone()
        states[0].ssm[:, ch] = src_states[0].ssm[:, ch]
        return states

    expected, _ = stream(lm, tokens, [t], patch)
    got = run(lm, tokens, [PatchState(0, ch, t=t, source_tokens=source.numpy())], chunk_len=16).logits
    assert close(got, expected)
    assert not close(got, lm(tokens), 1e-7)
    # patching in the sequence's own state changes nothing (same cut at t, so bit for bit)
    same = run(lm, tokens, [PatchState(0, list(range(128)), t=t, source_tokens=tokens)]).logits
    assert torch.equal(same, run(lm, tokens, snapshots=[t - 1]).logits)


def test_clamp_delta_to_zero_freezes_the_state_of_those_channels(lm, tokens):
    """Δ = 0: exp(0·A) = 1 and 0·B·u = 0, so h[d] stays what it was at from_t - 1 until to_t."""
    ch, a, b = [2, 11], 10, 25                      # the window crosses chunk boundaries at 16 and 24
    res = run(lm, tokens, [ClampDelta(0, ch, from_t=a, to_t=b)], include=("delta",), states=True, chunk_len=8)
    clean = run(lm, tokens, include=("delta",), states=True, chunk_len=8)
    delta, clean_delta = res.records[0]["delta"], clean.records[0]["delta"]              # [2, L, 128]
    assert torch.all(delta[:, a:b, ch] == 0)
    keep = torch.ones_like(delta, dtype=torch.bool)
    keep[:, a:b, ch] = False
    assert torch.equal(delta[keep], clean_delta[keep])   # layer 0's other Δ do not depend on its state
    h = res.records[0]["states"][:, :, ch]                                              # [2, L, 2, N]
    assert close(h[:, a:b], h[:, a - 1:a].expand(-1, b - a, -1, -1), 1e-6)
    assert not close(h[:, b], h[:, a - 1], 1e-3)
    one_chunk = run(lm, tokens, [ClampDelta(0, ch, from_t=a, to_t=b)], chunk_len=L)
    assert close(res.logits, one_chunk.logits)
    assert torch.equal(run(lm, tokens, [ClampDelta(0, ch, from_t=500)]).logits, lm(tokens))   # outside: no-op


def test_ablate_ssm_removes_the_mixer_from_the_residual_stream(lm, tokens):
    """With layer 1's mixer output zero on [a, b), its resid_post there is layer 0's, and the logits
    are the head applied to that."""
    a, b = 12, 30
    res = run(lm, tokens, [AblateSSM(1, from_t=a, to_t=b)], include=("resid_post",), chunk_len=8)
    r0, r1 = res.records[0]["resid_post"], res.records[1]["resid_post"]                 # [2, L, d_model]
    assert torch.equal(r1[:, a:b], r0[:, a:b])
    assert not torch.equal(r1[:, b:], r0[:, b:]) and not torch.equal(r1[:, :a], r0[:, :a])
    direct = lm.lm_head(lm.backbone.norm_f(r0[:, a:b]))
    assert close(res.logits[:, a:b], direct, 1e-6)
    clean = run(lm, tokens, chunk_len=8).logits
    assert torch.equal(res.logits[:, :a], clean[:, :a])


@pytest.mark.parametrize("kwargs, error, msg", [
    ({"snapshots": [L]}, ValueError, f"snapshot step {L} is out of range 0..{L - 1}"),
    ({"chunk_len": -1}, ValueError, "chunk_len must be >= 1"),
    ({"include": ("attention",)}, ValueError, "unknown trace quantities"),
    ({"include": ("delta", "decay")}, ValueError, r"Mamba1 layers cannot record \['decay'\]"),
    ({"interventions": [ClampDelta(5, [0])]}, ValueError, "layer 5 is out of range"),
    ({"interventions": [ClampDelta(0, [128])]}, ValueError, "channel 128 is out of range 0..127"),
    ({"interventions": [ZeroState(0, [1], t=L)]}, ValueError, f"t={L} is out of range"),
    ({"interventions": [AblateSSM(0, from_t=-1)]}, ValueError, "from_t=-1 must be >= 0"),
    ({"interventions": [PatchState(0, [1], t=30, source_tokens=np.zeros(10, dtype=np.int64))]}, ValueError,
     "fewer than t=30"),
    ({"interventions": [PatchState(0, [1], t=3, source_tokens=np.zeros((3, 10), dtype=np.int64))]}, ValueError,
     "batch 3 does not match 2"),
    ({"interventions": ["zero it"]}, TypeError, "not an intervention"),
])
def test_bad_arguments_are_named(lm, tokens, kwargs, error, msg):
    kwargs = dict(kwargs)
    with pytest.raises(error, match=msg):
        run(lm, tokens, kwargs.pop("interventions", ()), **kwargs)
