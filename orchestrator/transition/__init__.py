"""One transition of one saga, worked out step by step. Pure: no I/O, no clock, no randomness.

- `scratch.py`: `Transition`, the saga's state while the machine changes it, the commands,
  events and history the change gives, and `build()`, which freezes it into a Decision;
- `dispatch.py`: sending a step's next attempt (a command, or a child saga's start or cancel);
- `advance.py`: moving the saga on (stages, guards, sleeps, children, maps), and what a step
  that fails for good leads to;
- `retries.py`: a failed attempt, retried later if its policy allows;
- `replies.py`, `cancels.py`, `timers.py`: the handlers of replies, of cancels and undos,
  and of timers and deadlines, which `machine.decide` dispatches events to.
"""
