"""StopStringChecker: find stop strings in growing output text, and say how much text is not yet safe
to stream because it could still turn into a stop string."""
from __future__ import annotations

from collections.abc import Sequence

from engine.checks import check


class StopStringChecker:
    """Matches `stops` against the cumulative output text of one sequence.

    Each step, call `check(text, num_new_chars)` with the output text so far and how many characters
    this step added. Only the region those characters could complete is searched (the new characters plus
    len(stop) - 1 before them), so a step costs O(new chars + longest stop), and `text` may be just the
    text's tail of num_new_chars + max_stop_len - 1 characters (positions are then the tail's). Likewise
    `hold_back_len_for` reads only the last max_stop_len - 1 characters.
    """

    def __init__(self, stops: Sequence[str], include_stop_str_in_output: bool = False) -> None:
        check(isinstance(stops, (list, tuple)) and len(stops) > 0, "stop", stops, "must be a non-empty list")
        check(all(isinstance(s, str) and s for s in stops), "stop", stops, "must be non-empty strings")
        self.stops = tuple(stops)
        self.include_stop_str_in_output = include_stop_str_in_output
        self.max_stop_len = max(len(s) for s in self.stops)

    @property
    def hold_back_len(self) -> int:
        """Characters at the end of the text to keep back while streaming (vLLM's rule): a stop string not
        yet complete is at most len(longest stop) - 1 long. 0 when stop strings are returned anyway."""
        return 0 if self.include_stop_str_in_output else self.max_stop_len - 1

    def hold_back_len_for(self, text: str) -> int:
        """The exact amount to hold back for `text`: the longest suffix that is a proper prefix of some
        stop string (never more than `hold_back_len`)."""
        if self.include_stop_str_in_output:
            return 0
        best = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best

    def check(self, text: str, num_new_chars: int) -> tuple[str, int] | None:
        """The stop string that ends within the last `num_new_chars` characters of `text` and the length
        of text to keep: up to the start of the stop string, or up to its end with
        include_stop_str_in_output. None when no stop string completed. When several complete, the one
        that ends first wins (then the longer one), so the result does not depend on how the text was
        split into deltas."""
        if num_new_chars <= 0:
            return None
        first_new = len(text) - num_new_chars
        best: tuple[int, int, str] | None = None
        for stop in self.stops:
            idx = text.find(stop, max(0, first_new - len(stop) + 1))
            if idx != -1 and (best is None or (idx + len(stop), idx) < best[:2]):
                best = (idx + len(stop), idx, stop)
        if best is None:
            return None
        _, idx, stop = best
        return stop, idx + len(stop) if self.include_stop_str_in_output else idx
