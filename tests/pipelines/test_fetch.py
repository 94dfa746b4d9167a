"""Fetching one input: X-Robots-Tag opt-outs honoured as img2dataset does (and switchable off), and an
overall deadline per URL that a slow drip of bytes cannot outlast."""

import time

import pytest

from bench.loopback_http import serve_folder
from pipelines.sharding.sources import DISALLOWED_DIRECTIVES, FetchError, FetchSpec, fetch, opted_out


def test_opt_out_directives_for_every_agent_or_for_ours_only():
    assert opted_out(["noai"], "clips4", DISALLOWED_DIRECTIVES)
    assert opted_out(["nofollow", "NoImageAI, nosnippet"], "clips4", DISALLOWED_DIRECTIVES)
    assert opted_out(["clips4: noai"], "clips4", DISALLOWED_DIRECTIVES)
    assert not opted_out(["otherbot: noai"], "clips4", DISALLOWED_DIRECTIVES)
    assert not opted_out(["nofollow, noarchive"], "clips4", DISALLOWED_DIRECTIVES)
    assert not opted_out(["noai"], "clips4", ())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    (folder / "a.bin").write_bytes(bytes(range(256)) * 400)  # 100 KB
    with serve_folder(str(folder), slow_s=0.3) as base:
        yield base


def test_an_opted_out_image_is_not_downloaded_unless_told_to_ignore(served):
    body = bytes(range(256)) * 400
    with pytest.raises(FetchError) as caught:
        fetch(f"{served}/noai/a.bin", FetchSpec())
    assert caught.value.reason == "opted_out"
    assert fetch(f"{served}/noai/a.bin", FetchSpec(disallowed_directives=())) == body
    assert fetch(f"{served}/otherbot-noai/a.bin", FetchSpec()) == body
    assert fetch(f"{served}/a.bin", FetchSpec()) == body


def test_a_slow_drip_is_cut_at_the_deadline_though_each_read_is_quick(served):
    # 100 chunks of 1 KB, 0.3 s apart: 30 s in all, while no single read waits near timeout_s
    started = time.monotonic()
    with pytest.raises(FetchError) as caught:
        fetch(f"{served}/drip/a.bin", FetchSpec(timeout_s=5, retries=3, deadline_s=1.5))
    assert caught.value.reason == "timeout" and "deadline" in str(caught.value)
    assert time.monotonic() - started < 3  # the deadline covers the tries too: no retry after it
