"""JUnit XML of a `check` result (`--junit FILE`), so CI servers (GitHub, GitLab, Jenkins, Azure)
show the verdict natively.

The common JUnit layout (the Ant `junit` task's, read by every CI server): `<testsuites>` holds
one `<testsuite>` per checkpoint, which holds one `<testcase>` per attention block (plus one per
block that only the baseline has, and one named `(model)` when there are model-level findings).
A block with findings at or above `--fail-on` has one `<failure>` (type: the first finding's code,
message: its message, text: every failing finding with its remedy); findings below the gate go to
`<system-out>`; a block that computed no mask on the inputs is `<skipped>`. The
`tests` / `failures` / `errors` / `skipped` counts are those of the testcases.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from coordatt_diag.reports.atomic import write_text
from coordatt_diag.results import Finding, display_name
from coordatt_diag.runs.check import CheckResult, Verdict


def _finding_text(f: Finding) -> str:
    where = display_name(f.block) + (f" {f.mask}" if f.mask else "")
    return f"{f.severity.upper()} {where} [{f.code}]: {f.message}\n  remedy: {f.remedy}"


def _classname(v: Verdict) -> str:
    # CI servers split the classname at dots into package and class: keep the file name in one
    name = Path(v.report.checkpoint.path or "model").name.replace(".", "_")
    return f"coordatt-diag.{name}"


def _suite(v: Verdict) -> ET.Element:
    report = v.report
    by_block: dict[str, list[Finding]] = {b.name: list(b.findings) for b in report.blocks}
    extra: dict[str, list[Finding]] = {}
    for f in report.findings:
        (by_block if f.block in by_block else extra).setdefault(f.block, []).append(f)
    cases: list[tuple[str, list[Finding], bool]] = [
        (b.name, by_block[b.name], not b.masks) for b in report.blocks]
    # blocks only the baseline has, then the model itself
    cases += [(name, fs, False) for name, fs in extra.items() if name != ""]
    if "" in extra:
        cases.append(("", extra[""], False))

    suite = ET.Element("testsuite")
    ck = report.checkpoint
    props = ET.SubElement(suite, "properties")
    for key, value in (("checkpoint", ck.path), ("sha256", ck.sha256), ("format", ck.format),
                       ("epoch", ck.epoch), ("inputs", report.inputs.source),
                       ("samples", report.inputs.samples), ("fail_on", v.fail_on),
                       ("baseline", v.baseline), ("status", report.summary.status)):
        if value is not None:
            ET.SubElement(props, "property", name=key, value=str(value))
    failures = skipped = 0
    classname = _classname(v)
    for name, findings, no_masks in cases:
        case = ET.SubElement(suite, "testcase", name=display_name(name), classname=classname,
                             time="0")
        bad = [f for f in findings if f in v.failing]
        rest = [f for f in findings if f not in v.failing]
        if bad:
            failures += 1
            fail = ET.SubElement(case, "failure", message=f"{bad[0].code}: {bad[0].message}",
                                 type=bad[0].code)
            fail.text = "\n".join(_finding_text(f) for f in bad)
        elif no_masks:
            skipped += 1
            ET.SubElement(case, "skipped",
                          message="the block computed no mask on these inputs")
        if rest:
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join(_finding_text(f) for f in rest)
    suite.attrib.update({
        "name": ck.path or "model",
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": "0",
        "skipped": str(skipped),
        "time": f"{v.seconds:.3f}",
    })
    if v.started:
        suite.set("timestamp", v.started)
    return suite


def junit_xml(result: CheckResult) -> str:
    """The JUnit XML document of a check result."""
    root = ET.Element("testsuites", name="coordatt-diag check")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    seconds = 0.0
    for v in result.verdicts:
        suite = _suite(v)
        root.append(suite)
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
        seconds += v.seconds
    root.attrib.update({k: str(n) for k, n in totals.items()})
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


def write_junit(result: CheckResult, path: Path) -> None:
    """Write the JUnit XML to `path` atomically."""
    write_text(path, junit_xml(result))
