"""The harness itself: children run from several threads at once all report their own exit code.

Unguarded, multiprocessing records 255 for a few in every few hundred (two polls of one child).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from cli_support import _CONTEXT, exit_with, run_to_exit


def test_concurrent_children_all_report_their_exit_code():
    def one(index: int) -> int | None:
        return run_to_exit(_CONTEXT.Process(target=exit_with, args=(2 + index % 3,)), timeout=120)

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(one, range(300)))
    assert codes == [2 + index % 3 for index in range(300)]
