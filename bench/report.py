"""The Markdown report of one run (pasteable into the README): every table side by side."""

from __future__ import annotations

from typing import Any

from load import BY_NAME

Row = dict[str, Any] | None


def f2(v: float | None) -> str:
    return "–" if v is None or v != v else f"{v:.2f}"


def fr(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def ok(r: Row) -> Row:
    return r if r and "error" not in r else None


def run(group: dict[str, Any], target: str, scenario: str, c: str) -> Row:
    """A target's wrk result; direct/bare rows of a Sentinel-only scenario come from its baseline."""
    entry = group["targets"].get(target)
    if entry is None:
        return None
    sc = BY_NAME[scenario]
    if entry["kind"] != "sentinel" and sc.upstream_path is None and sc.baseline:
        scenario = sc.baseline
    return ok(entry["scenarios"].get(scenario, {}).get("runs", {}).get(c))


def ratio(x: Row, y: Row) -> float | None:
    return x["rps"] / y["rps"] if x and y and y["rps"] else None


def added(x: Row, direct: Row) -> float | None:
    return x["p50_ms"] - direct["p50_ms"] if x and direct else None


def rr(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def signed(v: float | None) -> str:
    return "–" if v is None else f"{v:+.2f}"


def header(results: dict[str, Any]) -> list[str]:
    m, s, cfg = results["machine"], results["settings"], results["sentinel_config"]
    out = [
        f"### Sentinel benchmark — {results['started']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']}, Python {m['python']}; "
        f"checkout {m['commit']}. wrk -t1, {s['duration_s']:g} s per step after {s['warmup_s']:g} s of warm-up, "
        f"mock upstream latency {s['mock_latency_ms']:g} ms.",
        "",
        f"Sentinel as a user runs it: {cfg['description']}",
    ]
    noise = results.get("noise")
    if noise:
        pct = noise["foreign_cpu_pct_of_one_core"]
        warn = " — **other processes were busy: numbers are noisy, re-run on a quiet machine**" if pct > 15 else ""
        out.append(
            f"Other processes during the run: {pct:.0f}% of one core on average "
            f"(load average {noise['loadavg_start']:.2f} → {noise['loadavg_end']:.2f}){warn}."
        )
    out.append("")
    return out


def group_tables(name: str, group: dict[str, Any], conc: list[int]) -> list[str]:
    targets = group["targets"]
    sentinels = [k for k in group["order"] if targets[k]["kind"] == "sentinel"]
    labels = {k: targets[k]["label"] for k in group["order"]}
    compare = group.get("compare")
    out = [f"#### {group['title']}", "", f"CPUs: {group['arrangement']['description']}.", ""]
    scenarios = [s for s in group["scenarios"] if any(s in targets[k]["scenarios"] for k in sentinels)]

    head = ["scenario", "c", "direct req/s", "bare req/s"]
    for k in sentinels:
        head += [f"{labels[k]} req/s", "S/B"]
    if compare:
        head.append(f"{labels[compare[0]]} ÷ {labels[compare[1]]}")
    head.append("server CPU % " + "/".join(["B", *[f"S{i + 1}" for i in range(len(sentinels))]]))
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc in scenarios:
        for c in map(str, conc):
            d, b = run(group, "direct", sc, c), run(group, "bare", sc, c)
            ss = [run(group, k, sc, c) for k in sentinels]
            if not any(ss):
                continue
            name_ = sc if BY_NAME[sc].upstream_path else f"{sc} (D/B = {BY_NAME[sc].baseline})"
            cells = [name_, c, fr(d and d["rps"]), fr(b and b["rps"])]
            for x in ss:
                cells += [fr(x and x["rps"]), rr(ratio(x, b))]
            if compare:
                cells.append(rr(ratio(run(group, compare[0], sc, c), run(group, compare[1], sc, c))))
            cpu = [r.get("server_cpu_pct") if r else None for r in (b, *ss)]
            cells.append("/".join("–" if v is None else f"{v:.0f}" for v in cpu))
            out.append("| " + " | ".join(cells) + " |")
    out.append("")

    head = ["scenario", "c", "direct p50 ms", "bare +p50 ms"]
    for k in sentinels:
        head += [f"{labels[k]} +p50 ms", "÷ bare +p50"]
    head.append("p99 ms " + "/".join(["D", "B", *[f"S{i + 1}" for i in range(len(sentinels))]]))
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc in scenarios:
        for c in map(str, conc):
            d, b = run(group, "direct", sc, c), run(group, "bare", sc, c)
            ss = [run(group, k, sc, c) for k in sentinels]
            if not any(ss):
                continue
            name_ = sc if BY_NAME[sc].upstream_path else f"{sc} (D/B = {BY_NAME[sc].baseline})"
            bare_added = added(b, d)
            cells = [name_, c, f2(d and d["p50_ms"]), signed(bare_added)]
            for x in ss:
                a = added(x, d)
                # a ratio to a non-positive difference means nothing (noise made bare faster than direct)
                cells += [signed(a), rr(a / bare_added if a is not None and bare_added and bare_added > 0 else None)]
            cells.append("/".join(f2(r and r["p99_ms"]) for r in (d, b, *ss)))
            out.append("| " + " | ".join(cells) + " |")
    out.append("")
    if len(sentinels) > 1 or compare:
        out.append("S1…: " + ", ".join(f"S{i + 1} = {labels[k]}" for i, k in enumerate(sentinels)) + ".")
        out.append("")
    out += ttfb_table(group)
    out += notes(group)
    return out


def ttfb_table(group: dict[str, Any]) -> list[str]:
    rows = [(k, group["targets"][k].get("ttfb")) for k in group["order"]]
    rows = [(k, r) for k, r in rows if r]
    if not rows:
        return []
    base = dict(rows).get("direct", {}).get("ttfb_p50_ms")
    out = [
        "Streaming, sequential requests (aiohttp client): TTFB = request sent → first body bytes; total → end "
        "of stream (the mock waits between events; Sentinel's stream has one more event, the usage chunk it asks for).",
        "",
        "| target | n | TTFB p50 ms | TTFB p99 ms | +TTFB p50 vs direct | total p50 ms | total p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for k, r in rows:
        extra = signed(r["ttfb_p50_ms"] - base) if base is not None and k != "direct" else "–"
        out.append(
            f"| {group['targets'][k]['label']} | {r['n']} | {f2(r['ttfb_p50_ms'])} | {f2(r['ttfb_p99_ms'])} | "
            f"{extra} | {f2(r['total_p50_ms'])} | {f2(r['total_p99_ms'])} |"
        )
    return [*out, ""]


def notes(group: dict[str, Any]) -> list[str]:
    lines = []
    bad = 0
    for k in group["order"]:
        t = group["targets"][k]
        for sc, e in t["scenarios"].items():
            if "skipped" in e:
                lines.append(f"- {t['label']} / {sc}: skipped ({e['skipped'][:100]})")
            for c, r in e.get("runs", {}).items():
                if "error" in r:
                    lines.append(f"- {t['label']} / {sc} c={c}: {r['error'][:120]}")
                elif r["non2xx"] or r["socket_errors"]:
                    bad += 1
                    lines.append(
                        f"- {t['label']} / {sc} c={c}: {r['non2xx']} non-2xx, {r['socket_errors']} socket errors"
                    )
        log_ = t.get("log")
        if log_ and (log_["tracebacks"] or log_["problems"]):
            lines.append(f"- {t['label']} log: {log_['levels']}, {log_['tracebacks']} tracebacks")
            lines += [f"  - {n}× {msg}" for msg, n in log_["problems"][:5]]
    if not bad:
        lines.insert(0, "- every response was 2xx, no socket errors")
    return [*lines, ""]


def checks(results: dict[str, Any]) -> list[str]:
    """Issue 11's one-core targets, per Sentinel target of the one-core group."""
    group = results["groups"].get("one-core")
    if not group:
        return []
    out = [
        "Targets (one core): chat c=64 ≥ 0.5× bare; stream c=16 ≥ 0.5× bare; added p50 at c=1 ≤ 2× the bare "
        "relay's; native within 15 % of /v1 (c=64 req/s).",
        "",
        "| target | chat c=64 S/B | stream c=16 S/B | chat c=1 added p50 ÷ bare's | native ÷ chat c=64 |",
        "|---|---|---|---|---|",
    ]
    for k in group["order"]:
        if group["targets"][k]["kind"] != "sentinel":
            continue

        def mark(v: float | None, good: bool) -> str:
            return "–" if v is None else f"{v:.2f} {'✓' if good else '✗'}"

        chat = ratio(run(group, k, "chat", "64"), run(group, "bare", "chat", "64"))
        stream = ratio(run(group, k, "stream", "16"), run(group, "bare", "stream", "16"))
        a, ab = added(run(group, k, "chat", "1"), run(group, "direct", "chat", "1")), added(
            run(group, "bare", "chat", "1"), run(group, "direct", "chat", "1")
        )
        lat = a / ab if a is not None and ab and ab > 0 else None
        native = ratio(run(group, k, "native", "64"), run(group, k, "chat", "64"))
        out.append(
            f"| {group['targets'][k]['label']} | {mark(chat, (chat or 0) >= 0.5)} | {mark(stream, (stream or 0) >= 0.5)} "
            f"| {mark(lat, lat is not None and lat <= 2)} | {mark(native, (native or 0) >= 0.85)} |"
        )
    return [*out, ""]


def soak_section(soak: dict[str, Any]) -> list[str]:
    w = soak["wrk"]
    mb = lambda kb: "–" if kb is None else f"{kb / 1024:.0f} MB"  # noqa: E731
    flat = soak.get("flat_pct")
    verdict = "–" if flat is None else f"{flat:+.1f} % ({'flat within 10 %' if abs(flat) <= 10 else 'NOT flat'})"
    return [
        f"Memory soak: {soak['duration_s']:g} s of chat at c=64 through {soak['label']} ({fr(w.get('rps'))} req/s, "
        f"p99 {f2(w.get('p99_ms'))} ms, {w.get('non2xx')} non-2xx). RSS: start {mb(soak['rss_start_kb'])}, after "
        f"{soak['warmup_s']:g} s warm-up {mb(soak['rss_warm_kb'])}, peak {mb(soak['rss_peak_kb'])}, end "
        f"{mb(soak['rss_end_kb'])}; largest deviation from the warm value {verdict}.",
        "",
    ]


def ledger_section(led: dict[str, Any]) -> list[str]:
    return [
        f"Ledger on PostgreSQL, {led['label']}, CPUs {led['arrangement']}: chat at c={led['concurrency']} for "
        f"{led['duration_s']:g} s, {fr(led['served_rps'])} req/s served; the ledger grew by {fr(led['ledger_rps'])} "
        f"records/s during the load, {led['rows']:,} rows in all ({led['rows_expected_note']}), the last one "
        f"{led['drain_s']:.1f} s after the load; outbox depth peak {led['depth_peak']:,}.",
        "",
    ]


def profile_section(prof: dict[str, Any]) -> list[str]:
    out = [
        f"py-spy of {prof['label']}, {prof.get('scenario', 'chat')} at c={prof['concurrency']} ({prof['samples']} samples): "
        + ", ".join(f"{k} {v:.0f}%" for k, v in prof.get("threads", [])),
        "",
        "| % of samples | deepest sentinel/ frame (incl. the libraries it calls) |",
        "|---|---|",
    ]
    out += [f"| {share:.1f} | `{name}` |" for name, share in prof.get("deepest_sentinel_frame", [])]
    out += ["", "Self time by package: " + ", ".join(f"{k} {v:.0f}%" for k, v in prof.get("self_by_package", [])[:10])]
    return [*out, ""]


def report(results: dict[str, Any]) -> str:
    out = header(results)
    conc = results["settings"]["concurrency"]
    for name, group in results["groups"].items():
        out += group_tables(name, group, conc)
    out += checks(results)
    if results.get("soak"):
        out += soak_section(results["soak"])
    if results.get("ledger"):
        out += ledger_section(results["ledger"])
    if results.get("profile"):
        out += profile_section(results["profile"])
    return "\n".join(out)
