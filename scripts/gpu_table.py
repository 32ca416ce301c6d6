#!/usr/bin/env python3
"""Print the GPU benchmark table from the JSON files of one scripts/gpu-test.sh run:
   gpu_table.py torch.json recall.json scorer.json"""
import json
import sys


def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"({p}: {e})")
        return {}


torch_, recall, scorer = (load(p) if p != "-" else {} for p in sys.argv[1:4])
if recall.get("recall"):
    print(f"\n== Recall host -> reserve, {recall.get('device', '?')} (GB/s; ratio to contiguous of the same run)")
    go_rows = recall.get("recall", [])
    t_rows = torch_.get("recall", [])
    contig = next((r["gbps"] for r in go_rows if r["case"] == "contiguous 64 MiB"), None)
    t_contig = next((r["gbps"] for r in t_rows if r["case"] == "contiguous 64 MiB"), None)
    print(f"{'case':<26} {'gather':>8} {'x contig':>9} {'batchCE':>8} {'x contig':>9} {'cuMemcpy/pg':>12} {'torch/pg':>9} {'torch x':>8}")
    if contig:
        print(f"{'contiguous 64 MiB':<26} {contig:8.1f} {1.0:9.2f} {'':>8} {'':>9} {'':>12} {t_contig or 0:9.1f}")
    for case in ("64 KiB pages", "256 KiB pages", "1024 KiB pages", "DeepSeek-V4 21x37440 B"):
        g = next((r for r in go_rows if r["case"] == case and r["method"] == "gather kernel"), None)
        bt = next((r for r in go_rows if r["case"] == case and r["method"] == "cuMemcpyBatchAsync"), None)
        per = next((r for r in go_rows if r["case"] == case and r["method"].startswith("cuMemcpyAsync per")), None)
        t = next((r for r in t_rows if r["case"] == case and r["method"].startswith("torch copy per")), None)
        base = contig
        if case.startswith("DeepSeek"):
            base = next((r["gbps"] for r in go_rows if r["case"] == case and r["method"] == "contiguous same bytes"), contig)
        if g:
            b = bt["gbps"] if bt else 0
            print(f"{case:<26} {g['gbps']:8.1f} {g['gbps'] / base:9.2f} {b:8.1f} {b / base:9.2f} {per['gbps'] if per else 0:12.1f} "
                  f"{t['gbps'] if t else 0:9.1f} {(t['gbps'] / t_contig) if t and t_contig else 0:8.2f}")
    sweep = [r for r in go_rows if "sweep" in r["method"]]
    if sweep:
        print("piece sweep: " + ", ".join(f"{r['case']}@{r['piece'] >> 10}K={r['gbps']:.1f}" for r in sweep))
    for r in go_rows:
        if "device->host" in r["case"]:
            print(f"{r['case']:<32} {r['method']:<16} {r['gbps']:8.1f} GB/s")

print(f"\n== Scorer, {scorer.get('device', '?')} (ms, median; ratio = GPU kernel / torch fp32 einsum)")
print(f"{'chunks':>7} {'B':>2} {'kernel float':>12} {'kernel fp8q':>11} {'torch einsum':>12} {'+dequant':>9} {'ratio':>6}")
for n in (131072, 262144):
    for b in (1, 8):
        kf = next((r["median_ms"] for r in scorer.get("scorer", []) if r["chunks"] == n and r["batch"] == b and r["variant"] == "float"), 0)
        k8 = next((r["median_ms"] for r in scorer.get("scorer", []) if r["chunks"] == n and r["batch"] == b and r["variant"] == "fp8q"), 0)
        te = next((r["median_ms"] for r in torch_.get("scorer", []) if r["chunks"] == n and r["batch"] == b and r["method"] == "einsum"), 0)
        td = next((r["median_ms"] for r in torch_.get("scorer", []) if r["chunks"] == n and r["batch"] == b and r["method"] == "einsum+dequant"), 0)
        print(f"{n:>7} {b:>2} {kf:12.4f} {k8:11.4f} {te:12.4f} {td:9.4f} {kf / te if te else 0:6.2f}")

# Whole cycle: our GPU ScoreBatch (one GPU cycle per batch, selection included) against the
# published PyTorch forward called once per request and target layer, same run.
if len(sys.argv) > 4:
    sb = load(sys.argv[4])
    fw = torch_.get("forward", [])
    print(f"\n== Whole ScoreBatch vs published PyTorch forward, {sb.get('device', '?')} (ms, median; ratio = ours / torch)")
    print(f"{'chunks':>7} {'requests':>8} {'ours wall':>10} {'ours GPU':>9} {'torch fwd':>10} {'ratio':>6} {'CPU':>8}")
    for r in sb.get("scorebatch", []):
        t = next((f["median_ms"] for f in fw if f["chunks"] == r["Chunks"] and f["requests"] == r["Requests"]), 0)
        print(f"{r['Chunks']:>7} {r['Requests']:>8} {r['GPUms']:10.2f} {r['GPUDeviceMs']:9.2f} {t:10.2f} "
              f"{r['GPUms'] / t if t else 0:6.3f} {r['CPUms'] or 0:8.1f}")
