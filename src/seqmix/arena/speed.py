"""Speed and memory of one whole language model vs context length, run in a fresh process.

Measured: prefill time per token (the chunked path through the state); decode latency per token after a
context of L tokens, also as a fraction of the same process's measured copy bandwidth (bytes of weights and
state read per decoded token); the process's peak resident memory after each L (a fresh process per
entrant makes the high-water mark meaningful); the recurrent state's size. Training throughput is the
language-modelling section's (measured over whole training runs).

One call is one round: every figure is timed once here, as the fastest of three blocks of calls lasting
``min_time`` together (a prefill longer than ``min_time`` is the faster of two calls after the untimed
first), and the arena repeats rounds across its whole speed section, so the spread over rounds includes the machine's
drift between minutes, not only between calls.

``generation``: tokens per second of ``seqmix.model.generate.sample`` (the public decoding path) at several
batch sizes after a prompt of ``context`` tokens, from the time ``sample`` itself reports for the tokens after
the prefill.
"""
from __future__ import annotations

import json
import resource
import sys
import time

import torch

from seqmix.bench.harness import fastest_block, measure_roofline
from seqmix.bench.suites import state_bytes
from seqmix.model import ModelConfig, SeqMixLM
from seqmix.model.generate import sample


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(config: dict, lengths: list[int], max_seconds: float, threads: int, min_time: float = 0.2) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    roof = measure_roofline(copy_mib=max(16, int(1280 * min_time)), min_time=min_time)
    model = SeqMixLM(ModelConfig.from_dict(config))
    vocab = model.config.vocab_size
    params = model.num_parameters()
    quadratic = any(s.mixer == "attention" and s.options.get("window") is None for s in model.config.layer_specs())
    result = {"params": params, "linear_time": not quadratic, "roofline": vars(roof), "lengths": []}

    model.eval()
    with torch.no_grad():
        for L in lengths:
            tokens = torch.randint(0, vocab, (1, L))
            last = {}

            def prefill_call():
                last["state"] = model(tokens, state=model.init_state(1))[1]

            start = time.perf_counter()
            prefill_call()  # warm-up at this length
            long = time.perf_counter() - start >= min_time
            prefill = fastest_block(prefill_call, 0.0 if long else min_time, blocks=2 if long else 3)
            state = last.pop("state")
            token = tokens[:, -1:]
            model(token, state=state)  # warm-up
            decode = fastest_block(lambda s=state: model(token, state=s), min_time)
            nbytes = state_bytes(state) + params * 4
            result["lengths"].append({
                "L": L, "prefill_us_per_token": 1e6 * prefill / L, "decode_us_per_token": 1e6 * decode,
                "decode_bandwidth_fraction": roof.bandwidth_fraction(nbytes, decode),
                "state_mib": state_bytes(state) / 2**20, "peak_rss_mib": _peak_rss_mib()})
            del state
            if prefill > max_seconds:
                result["stopped_after"] = L
                break
    return result


def generation(config: dict, batches: list[int], context: int, new_tokens: int, threads: int,
               min_time: float = 0.2) -> dict:
    """Generated tokens/s of `sample` at each batch size: its own timing of the tokens after the prefill, in the
    fastest of at least two calls that together decode for at least `min_time`."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = SeqMixLM(ModelConfig.from_dict(config)).eval()
    rows = []
    for batch in batches:
        prompt = torch.randint(0, model.config.vocab_size, (batch, context))
        sample(model, prompt, 2, temperature=0)  # warm-up
        calls = []  # (prefill, decode) seconds of each call
        while len(calls) < 2 or sum(decode for _, decode in calls) < min_time:
            timings = {}
            sample(model, prompt, new_tokens, temperature=0, timings=timings)
            calls.append((timings["prefill_seconds"], timings["decode_seconds"]))
        prefill, decode = min(p for p, _ in calls), min(d for _, d in calls)
        rows.append({"batch": batch, "context": context, "new_tokens": new_tokens, "calls": len(calls),
                     "prefill_seconds": prefill, "decode_seconds": decode, "tokens_per_s": batch * new_tokens / decode})
    return {"params": model.num_parameters(), "batches": rows}


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    kind = job.pop("kind", "speed")
    print(json.dumps({"speed": measure, "generation": generation}[kind](**job)))
