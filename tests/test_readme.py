"""README's quick start shows what make demo prints, and its prose agrees with it."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from readme_sample import README, sample_span  # noqa: E402

FIGURE = r"(\d\.\d{3}) \((\d\.\d{3})–(\d\.\d{3})\)"
FIRST_LINE = re.compile(rf"val RSNA mAP \(tuned on val\): untrained (\d\.\d{{3}}) -> trained {FIGURE}"
                        rf"(?: \((\d\.\d{{3}}) without the image-level gate\))?; synthetic test RSNA mAP \(never "
                        rf"tuned on\) {FIGURE}; (\d+) s in all \(intervals: 95 %, bootstrap over images\)$")


def _sample() -> tuple[str, str]:
    text = README.read_text()
    start, end = sample_span(text)
    return text[start:end], text[end:]


def test_the_sample_has_the_demos_format_and_names_every_result():
    sample, _ = _sample()
    lines = sample.splitlines()
    assert FIRST_LINE.match(lines[0]), lines[0]
    assert lines[1] == "results:" and lines[-1] == "review them in a browser: pneumodet serve demo/runs/demo"
    assert [line.split()[0] for line in lines[2:-1]][:3] == ["data", "QC", "run"] and len(lines) == 15
    for match in re.finditer(FIGURE, lines[0]):  # each interval holds its figure
        low, value, high = float(match[2]), float(match[1]), float(match[3])
        assert low <= value <= high


def test_the_prose_after_the_sample_quotes_its_time():
    sample, after = _sample()
    seconds = int(FIRST_LINE.match(sample.splitlines()[0])[9])
    quoted = re.search(r"`make demo` on .*?: (\d+) min (\d+) s", after, re.S)
    assert quoted, "the paragraph after the sample says how long make demo took"
    assert abs(int(quoted[1]) * 60 + int(quoted[2]) - seconds) <= 1
