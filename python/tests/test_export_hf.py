"""The ecosystem round trip: lime-bench runs exported by `harness export-hf` load into Hugging Face
transformers and give the run's own logits and test accuracy; `harness gen` Parquet loads into
pandas and `datasets` with the JSONL's rows.

    python3 python/tests/test_export_hf.py      # HARNESS=path/to/harness (default target/debug)

It trains a tiny llama and a tiny lime (MQAR, 3 layers, 4 heads over 2 kv heads, a few seconds),
exports both, and checks for each:
  * the folder loads with AutoModelForCausalLM (llama: a plain LlamaForCausalLM without remote
    code; lime: LimeForCausalLM from the shipped modeling_lime.py, trust_remote_code=True);
  * its logits on the check examples equal lime-bench's (max |delta| <= 1e-4);
  * its teacher-forced accuracy over the run's test split (exported by `gen --from-run`, read
    from Parquet) equals the run's result.json test_acc exactly (same count of right tokens);
  * greedy `generate` equals an argmax loop over the full forward.
Without torch/transformers/pandas/datasets it prints why it is skipped and exits 0.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
HARNESS = os.environ.get("HARNESS", str(ROOT / "target" / "debug" / "harness"))

try:
    import datasets
    import pandas
    import torch
    import transformers
    from safetensors.torch import load_file
except ImportError as e:
    print(f"test_export_hf: SKIPPED: {e} (pip install -r python/requirements.txt)")
    sys.exit(0)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


def harness(*args):
    subprocess.run([HARNESS, *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def train(out):
    """A tiny llama and lime run; returns {model: run folder}."""
    harness(
        "--task", "mqar", "--models", "llama,lime", "--set", "vocab_size=32", "--set",
        "seq_len=16", "--set", "num_kv_pairs=2", "--model-set", "d_model=32", "--model-set",
        "n_layers=3", "--model-set", "n_heads=4", "--model-set", "n_kv_heads=2", "--model-set",
        "d_ff=64", "--match", "steps", "--steps", "60", "--batch-size", "16", "--n-val", "32",
        "--n-test", "200", "--lr", "3e-3", "--out", out, "--quiet",
    )
    runs = {}
    for d in sorted((out / "runs").iterdir()):
        runs[json.loads((d / "config.json").read_text())["model"]] = d
    assert set(runs) == {"llama", "lime"}, runs
    return runs


def test_split(run, tmp):
    """The run's test split from Parquet (pandas and datasets) after checking both against JSONL."""
    spec = json.loads((run / "config.json").read_text())
    n = spec["n_test"]
    pq, js = tmp / f"{run.name}.parquet", tmp / f"{run.name}.jsonl"
    harness("gen", "--from-run", run, "--split", "test", "--n", n, "--out", pq)
    harness("gen", "--from-run", run, "--split", "test", "--n", n, "--out", js)
    lines = [json.loads(l) for l in js.read_text().splitlines()]
    df = pandas.read_parquet(pq)
    ds = datasets.load_dataset("parquet", data_files=str(pq), split="train")
    assert list(df.columns) == list(lines[0].keys()) == ds.column_names, df.columns
    assert len(df) == len(ds) == len(lines) == n
    for want, (_, row), drow in zip(lines, df.iterrows(), ds):
        for got in (
            {**row.to_dict(), "tokens": [int(t) for t in row["tokens"]],
             "targets": [[int(p), int(t)] for p, t in row["targets"]]},
            dict(drow),
        ):
            got = {**got, "meta": json.loads(got["meta"])}
            assert got == want, (got, want)
        assert "<" not in want["answer"]
    return spec, lines


def check(model_name, run, tmp):
    out = tmp / f"hf-{model_name}"
    harness("export-hf", run, "--out", out)
    remote = model_name == "lime"
    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=remote)
    want_class = "LimeForCausalLM" if remote else "LlamaForCausalLM"
    assert type(model).__name__ == want_class, type(model)
    model.eval()

    ref = load_file(out / "lime_bench_check.safetensors")
    with torch.no_grad():
        logits = model(ref["input_ids"]).logits
    delta = (logits - ref["logits"]).abs().max().item()
    assert delta <= 1e-4, f"{model_name}: logits differ by {delta}"

    spec, lines = test_split(run, tmp)
    result = json.loads((run / "result.json").read_text())
    assert result["metric"] == "teacher-forced", result["metric"]
    seq_len, pad = spec["seq_len"], model.config.lime_bench["pad_id"]
    ids = torch.full((len(lines), seq_len), pad, dtype=torch.long)
    for i, l in enumerate(lines):
        ids[i, : len(l["tokens"])] = torch.tensor(l["tokens"][:seq_len])
    with torch.no_grad():
        pred = model(ids).logits.argmax(-1)
    right = total = 0
    for i, l in enumerate(lines):
        for p, t in l["targets"]:
            right += int(pred[i, p].item() == t)
            total += 1
    acc = right / total
    assert acc == result["test_acc"], f"{model_name}: {acc} vs the run's {result['test_acc']}"

    prompt = ref["input_ids"][:1, :6]
    gen = model.generate(prompt, max_new_tokens=4, do_sample=False)
    loop = prompt
    with torch.no_grad():
        for _ in range(4):
            loop = torch.cat([loop, model(loop).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(gen, loop), (gen, loop)
    print(f"test_export_hf: {model_name}: {want_class}, max |logits delta| {delta:.1e}, "
          f"test accuracy {acc:.4f} = the run's {result['test_acc']:.4f} ({right}/{total})")


def main():
    print(f"test_export_hf: torch {torch.__version__}, transformers {transformers.__version__}")
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        runs = train(tmp / "results")
        for model_name, run in runs.items():
            check(model_name, run, tmp)
    print("test_export_hf: passed")


if __name__ == "__main__":
    main()
