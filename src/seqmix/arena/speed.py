"""Speed and memory of one whole language model vs context length, run in a fresh process.

Measured: training tokens/s (forward + backward + AdamW step); prefill time per token (the chunked
path through the state); decode latency per token after a context of L tokens; the process's peak
resident memory after each L (a fresh process per architecture makes the high-water mark meaningful);
the recurrent state's size; and each speed as a fraction of the same process's measured matmul peak
(FLOPs counted by torch's FlopCounterMode, plus causal attention's analytic FLOPs) or memory bandwidth
(bytes of weights and state read per decoded token).
"""
from __future__ import annotations

import json
import resource
import sys
import time

import torch

from seqmix.bench.harness import measure_roofline, time_interleaved
from seqmix.bench.suites import state_bytes
from seqmix.model import ModelConfig, SeqMixLM


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _model_flops(model: SeqMixLM, tokens: torch.Tensor) -> float:
    """Matmul FLOPs of one forward: the head and embedding side plus each mixer's own count."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(tokens)
    flops = float(counter.get_total_flops())
    T = tokens.shape[1]
    for block in model.blocks:  # SDPA is invisible to the counter on CPU
        mixer = block.mixer
        if getattr(mixer, "registered_name", "") == "attention":
            visible = T * (T + 1) / 2 if mixer.window is None else T * min(T, mixer.window)
            flops += 4 * tokens.shape[0] * mixer.n_heads * visible * mixer.head_dim
    return flops


def measure(config: dict, lengths: list[int], train_batch: int, train_seq_len: int, max_seconds: float,
            threads: int, min_time: float = 0.2) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    roof = measure_roofline(copy_mib=max(16, int(1280 * min_time)), min_time=min_time)
    model = SeqMixLM(ModelConfig.from_dict(config))
    vocab = model.config.vocab_size
    params = model.num_parameters()

    # training throughput
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, vocab, (train_batch, train_seq_len + 1))

    def train_step():
        loss = torch.nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = time_interleaved({"train": train_step}, rounds=2, min_time=2 * min_time)["train"]
    train_tokens_per_s = train_batch * train_seq_len / t.median
    train_flops = 3 * _model_flops(model, batch[:, :-1])  # backward ≈ 2× forward
    result = {"params": params, "roofline": vars(roof), "train_tokens_per_s": train_tokens_per_s,
              "train_roof_fraction": roof.compute_fraction(train_flops, t.median), "lengths": []}

    model.eval()
    with torch.no_grad():
        for L in lengths:
            tokens = torch.randint(0, vocab, (1, L))
            start = time.perf_counter()
            _, state = model(tokens, state=model.init_state(1))
            prefill = time.perf_counter() - start
            if prefill < max_seconds / 4:  # cheap enough to repeat for a steadier number
                prefill = min(prefill, time_interleaved(
                    {"p": lambda: model(tokens, state=model.init_state(1))}, rounds=2, min_time=0.0, warmup=0)["p"].median)
            # counting FLOPs reruns the forward: skip it where that is too slow (the fraction is then None)
            flops = _model_flops(model, tokens) if prefill < max_seconds / 2 else None
            token = tokens[:, -1:]
            decode = time_interleaved({"d": lambda s=state: model(token, state=s)}, rounds=3,
                                      min_time=min_time)["d"].median
            nbytes = state_bytes(state) + params * 4
            result["lengths"].append({
                "L": L, "prefill_us_per_token": 1e6 * prefill / L, "decode_us_per_token": 1e6 * decode,
                "prefill_roof_fraction": None if flops is None else roof.compute_fraction(flops, prefill),
                "decode_bandwidth_fraction": roof.bandwidth_fraction(nbytes, decode),
                "state_mib": state_bytes(state) / 2**20, "peak_rss_mib": _peak_rss_mib()})
            del state
            if prefill > max_seconds:
                result["stopped_after"] = L
                break
    return result


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    print(json.dumps(measure(**job)))
