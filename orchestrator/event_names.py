"""The names of what the engine records and announces.

`HistoryEvent`: the event of every history entry (the `event` column of saga_history, the
HTTP API's history, the log line of each entry, the `event` label of saga_transitions_total),
and of what the engine tells its observer without a saga to record it in. Adapters match on
these members (adapters/metrics.py), so a renamed event cannot silently stop being counted.

`Outcome`: the status of an outcome event on `saga.events` (routing key `<saga>.<status>`),
part of wire protocol v1.

Both are StrEnums: a member is its string wherever it is stored, sent or logged, and a name
read back from a row (a plain str) compares equal to its member.
"""

from __future__ import annotations

from enum import StrEnum, unique


@unique
class HistoryEvent(StrEnum):
    # -- a saga as a whole ----------------------------------------------------------------
    # machine.start: a new saga, with the version of the definition it runs.
    SAGA_STARTED = "saga_started"
    # The start that took the saga's semantic locks (semantic_locks.holding): its first entry.
    LOCKS_ACQUIRED = "locks_acquired"
    # The unit of work that finishes a saga which locks: its resources are given back.
    LOCKS_RELEASED = "locks_released"
    # on_cancel, or machine.start with a cancel held for its key: the saga compensates.
    SAGA_CANCEL_ACCEPTED = "saga_cancel_accepted"
    # on_cancel while compensating already: the cancel changes nothing.
    CANCEL_IGNORED = "cancel_ignored"
    # on_cancel of a finished saga, or of one past its pivot: refused, with why.
    CANCEL_REFUSED = "cancel_refused"
    # cancel_children: a cancelled saga cancels its running child sagas.
    CHILD_CANCEL_REQUESTED = "child_cancel_requested"
    # on_undo: a parent undoes the step that started this child saga.
    UNDO_REQUESTED = "undo_requested"
    # Transition.answer_parent: a child saga that ended answered its parent's step.
    PARENT_ANSWERED = "parent_answered"
    # failed_for_good or deadline_passed: a step failed for good, or the deadline passed.
    SAGA_COMPENSATING = "saga_compensating"
    # deadline_passed: the running saga's deadline passed (it compensates, or parks).
    SAGA_DEADLINE_EXCEEDED = "saga_deadline_exceeded"
    # compensation_overdue: the compensation's deadline passed; the saga parks.
    COMPENSATION_DEADLINE_EXCEEDED = "compensation_deadline_exceeded"
    # Transition.finish: every step succeeded (or was skipped).
    SAGA_COMPLETED = "saga_completed"
    # Transition.finish: the definition's output= raised as the saga completed; the saga
    # completes all the same, without an output.
    OUTPUT_FAILED = "output_failed"
    # Transition.finish: every step that needed undoing was undone after a failure.
    SAGA_COMPENSATED = "saga_compensated"
    # Transition.finish: every step that needed undoing was undone after a cancel.
    SAGA_CANCELLED = "saga_cancelled"
    # Transition.finish: parked for an operator (past the pivot, or a compensation ran out).
    SAGA_FAILED = "saga_failed"
    # operators.operate: an operator paused the saga.
    SAGA_PAUSED = "saga_paused"
    # operators.operate: an operator resumed the paused saga.
    SAGA_RESUMED = "saga_resumed"
    # operators.operate: an operator continues a parked saga with a fresh retry budget.
    SAGA_RETRIED = "saga_retried"
    # Engine.operate: an operator's action that does not apply now, kept for the audit trail.
    OPERATOR_ACTION_REFUSED = "operator_action_refused"
    # Starter: a start came with this saga's key but other input (the key was reused).
    START_REPEATED = "start_repeated"
    # -- steps ----------------------------------------------------------------------------
    # dispatch: an attempt of a step's action was sent.
    STEP_DISPATCHED = "step_dispatched"
    # dispatch: an attempt of a step's compensation was sent.
    COMPENSATION_DISPATCHED = "compensation_dispatched"
    # on_reply (heard): the first heartbeat of an action's attempt, its participant took it.
    STEP_STARTED = "step_started"
    # on_reply: the action succeeded; `seconds` is its latency.
    STEP_SUCCEEDED = "step_succeeded"
    # on_reply: the compensation succeeded; `seconds` is its latency.
    STEP_COMPENSATED = "step_compensated"
    # An action failed for good (its reply, its guard, until=, items=), or the deadline cut it off.
    STEP_FAILED = "step_failed"
    # retry_later: a failed action's attempt is tried again after a wait.
    STEP_RETRY_SCHEDULED = "step_retry_scheduled"
    # retry_later: a failed compensation's attempt is tried again after a wait.
    COMPENSATION_RETRY_SCHEDULED = "compensation_retry_scheduled"
    # on_timers (timed_out): an action's attempt ran out of time; `timeout` says which limit.
    STEP_TIMED_OUT = "step_timed_out"
    # on_timers (timed_out): a compensation's attempt ran out of time.
    COMPENSATION_TIMED_OUT = "compensation_timed_out"
    # compensation_failed: a compensation ran out after another had parked the saga.
    COMPENSATION_PARKED = "compensation_parked"
    # begin_step (a false guard with on_guard_false="skip") or an operator's skip.
    STEP_SKIPPED = "step_skipped"
    # mark_compensated: an operator says the parked compensation was done by hand.
    STEP_MARKED_COMPENSATED = "step_marked_compensated"
    # begin_sleep: a sleep step began; `until` is when it wakes.
    SLEEP_STARTED = "sleep_started"
    # on_timers: a sleep step woke.
    SLEEP_FINISHED = "sleep_finished"
    # begin_wait: a wait step began; `until` is when it times out.
    WAIT_STARTED = "wait_started"
    # on_signal or begin_wait: the wait took its signal; the payload is the step's result.
    # `seconds`: how long the step waited (0 for a signal kept from before it began).
    WAIT_FINISHED = "wait_finished"
    # on_timers: a wait's timeout passed without its signal; `on_timeout` says what followed.
    WAIT_TIMED_OUT = "wait_timed_out"
    # on_signal: a signal came before its wait step began; it is kept for it.
    SIGNAL_HELD = "signal_held"
    # on_signal: a signal the saga cannot take (finished, never waits for it, a payload that
    # does not match, its wait over); Engine.signal, one naming no saga (observer only).
    # Announced as `<saga>.signal_refused`.
    SIGNAL_REFUSED = "signal_refused"
    # begin_map: a map step expanded into its items.
    MAP_STARTED = "map_started"
    # progress_map: every item of a map step succeeded.
    MAP_FINISHED = "map_finished"
    # on_reply: a reply to no attempt in flight; Engine.replies, one naming no saga (no row).
    REPLY_IGNORED = "reply_ignored"
    # -- starts that started nothing: told to the observer only (no saga, no history) -----
    # Starter or SemanticLocks: the key has a saga, or a start waiting for its locks, already.
    SAGA_START_DUPLICATE = "saga_start_duplicate"
    # Engine.reject_start: a start to be dead-lettered, announced as `<saga>.rejected`.
    SAGA_START_INVALID = "saga_start_invalid"
    # SemanticLocks.take (on_locked="reject"), or a child saga that cannot start.
    SAGA_START_REJECTED = "saga_start_rejected"
    # SemanticLocks.take (on_locked "queue" or "wait"): the start waits for its resources.
    SAGA_START_QUEUED = "saga_start_queued"
    # Engine.sweep_locks: a queued start's lock_wait ran out; rejected.
    LOCK_WAIT_EXPIRED = "lock_wait_expired"


@unique
class Outcome(StrEnum):
    """The status of an outcome event: how a saga ended, or why a request to it came to
    nothing. The first four are the finished SagaStatus values."""

    COMPLETED = "completed"
    COMPENSATED = "compensated"
    CANCELLED = "cancelled"
    FAILED = "failed"  # parked: needs an operator
    # A cancel the saga refused (finished, or past its pivot): the canceller hears why.
    CANCEL_REFUSED = "cancel_refused"
    # A start that started no saga (a held lock, an unknown saga, invalid input).
    REJECTED = "rejected"
    # A signal the saga did not take (unknown saga, finished, not waited for, bad payload).
    SIGNAL_REFUSED = "signal_refused"
