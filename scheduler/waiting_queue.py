"""The scheduler's waiting queue, one class per scheduling policy (vLLM's `--scheduling-policy`).

Both have the same methods, so that the scheduler has one path:
- `add(request)`: queue a new request; `requeue(request)`: a preempted one goes back.
- `peek()` / `popleft()`: the next request to admit (IndexError when empty); `remove(request)`: an
  aborted one (ValueError when absent).
- `len()`, truth, `in` (identity) and iteration in admission order.

"fcfs" (the default), FCFSRequestQueue: a deque in arrival order; a preempted request goes back to
the front. "priority", PriorityRequestQueue: a heap on (priority, arrival_time): a lower priority value
first, ties by earlier arrival, as vLLM's; a preempted request goes back to its place in that order.
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

from engine.checks import check

if TYPE_CHECKING:
    from engine.request import Request


def priority_key(request: Request) -> tuple[int, float]:
    """(priority, arrival_time): the priority policy's order, the smaller first."""
    return request.priority, request.arrival_time


def check_priority(priority: int, policy: str) -> None:
    """A request's priority: an int; other than 0 only under the priority policy (vLLM's message)."""
    check(isinstance(priority, int) and not isinstance(priority, bool), "priority", priority,
          "must be an int (lower is scheduled earlier)")
    if priority != 0 and policy != "priority":
        raise ValueError(f"Got priority {priority} but Priority scheduling is not enabled.")


class FCFSRequestQueue(deque):
    """First come, first served: a deque whose methods are deque's own (C calls on the hot path)."""

    add = deque.append
    requeue = deque.appendleft

    def peek(self) -> Request:
        return self[0]


class PriorityRequestQueue:
    """A heap of (priority, arrival_time, insertion number, request): the insertion number breaks the
    remaining ties (n > 1 siblings share an arrival time) and keeps Requests out of comparisons."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []
        self._num_added = itertools.count()

    def add(self, request: Request) -> None:
        heapq.heappush(self._heap, (*priority_key(request), next(self._num_added), request))

    requeue = add

    def peek(self) -> Request:
        return self._heap[0][-1]

    def popleft(self) -> Request:
        return heapq.heappop(self._heap)[-1]

    def remove(self, request: Request) -> None:
        for i, entry in enumerate(self._heap):
            if entry[-1] is request:
                del self._heap[i]
                heapq.heapify(self._heap)
                return
        raise ValueError(f"request {request.request_id!r} is not waiting")

    def __len__(self) -> int:
        return len(self._heap)

    def __contains__(self, request: object) -> bool:
        return any(entry[-1] is request for entry in self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (entry[-1] for entry in sorted(self._heap, key=lambda entry: entry[:3]))


WAITING_QUEUES = {"fcfs": FCFSRequestQueue, "priority": PriorityRequestQueue}
SCHEDULING_POLICIES = tuple(WAITING_QUEUES)
