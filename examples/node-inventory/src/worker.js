'use strict';
// One command, in the order of work of docs/protocol-idempotency.md, section 2:
//
//   parse ─▶ stored reply for this key? ─▶ expired? ─▶ BEGIN; claim the key; effect; store the
//   reply; COMMIT (heartbeats meanwhile) ─▶ publish the reply, wait for the confirm ─▶ ack
//
// Sections 3 to 5 (the barrier, duplicates, compensations) are `runAction` and
// `runCompensation`; section 6 (expiry) `expiredError`; section 7 (heartbeats, time limits)
// `Heartbeats` and `withTimeLimit`.

const crypto = require('node:crypto');
const barrier = require('./barrier');
const { BusinessFailure, HANDLERS } = require('./inventory');
const { log } = require('./log');
const { parseCommand, replyBody, failure, expiredError, heartbeatSchedule } = require('./protocol');

const NULL_COMPENSATION = { null_compensation: true };
const COMPENSATED_ALREADY = failure(
  'compensated_already',
  'the compensation of this step was recorded before the action arrived; not executed',
  false,
);

class TimedOut extends Error {}

const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

// What a command's own stored row answers to a duplicate (section 4); the marker a
// compensation leaves on its action's key is no answer but a refusal, handled apart.
function storedAnswer(row) {
  if (row.outcome === 'success') return { result: row.result };
  const error = row.error || {};
  return { error: failure(error.type || 'error', error.message || '', false) };
}

class Worker {
  constructor({ pool, channel, slowSeconds = 2, fault = null }) {
    this.pool = pool;
    this.channel = channel;
    this.slowSeconds = slowSeconds;
    // `after_commit_before_reply@N`: SIGKILL this process right after the Nth command's
    // transaction committed, before its reply is sent (crash tests).
    this.fault = fault;
    this.committed = 0;
    this.inFlight = new Set();
  }

  // Settles every delivery: acked once answered, rejected without requeue when it is no
  // command (the queue dead-letters it), rejected with requeue after a backoff when handling
  // failed for another reason (the queue's delivery limit ends a message that always fails).
  async onMessage(message) {
    const done = this.handle(message);
    this.inFlight.add(done);
    try {
      await done;
    } finally {
      this.inFlight.delete(done);
    }
  }

  async handle(message) {
    const parsed = parseCommand(message);
    if (parsed.problem) {
      log('command_dead_lettered', { reason: parsed.problem, message_id: message.properties.messageId });
      this.channel.reject(message, false);
      return;
    }
    const { command, name, replyTo } = parsed;
    const fields = {
      command: name,
      command_id: command.command_id,
      saga_id: command.saga_id,
      step: command.step,
      kind: command.kind,
      attempt: command.attempt,
      redelivered: message.fields.redelivered,
    };
    const settle = { taken: false };
    try {
      const answer = await this.answer(command, name, replyTo, message, settle, fields);
      await this.publish(replyTo, command, answer);
      log('command_answered', { ...fields, outcome: answer.error ? 'failure' : 'success' });
      if (!settle.taken) this.channel.ack(message);
    } catch (err) {
      log('command_failed', { ...fields, error: String(err && err.stack ? err.stack : err) });
      if (settle.taken) return; // acked already: the orchestrator's timeout and retry answer for it
      const count = Number(message.properties.headers?.['x-delivery-count'] || 0);
      await sleep(Math.min(0.1 * 2 ** Math.min(count, 10), 10));
      this.channel.reject(message, true);
    }
  }

  // The reply to send: `{ result }` or `{ error }`.
  async answer(command, name, replyTo, message, settle, fields) {
    const handler = HANDLERS[name];
    if (!handler) {
      return { error: failure('unknown_command', `this service has no command ${name}`, false) };
    }
    const client = await this.pool.connect();
    try {
      const stored = await barrier.row(client, command, command.kind);
      if (stored && stored.outcome) {
        log('duplicate_replayed', { ...fields, outcome: stored.outcome });
        return storedAnswer(stored);
      }
      if (command.kind === 'action' && stored && stored.written_by === 'compensation') {
        log('hanging_action_refused', fields);
        return { error: COMPENSATED_ALREADY };
      }
    } finally {
      client.release();
    }
    const expired = expiredError(command);
    if (expired) {
      log('expired_refused', { ...fields, expires_at: command.expires_at });
      return { error: expired };
    }
    const heartbeats = new Heartbeats(this, replyTo, command, fields);
    try {
      const reported = await heartbeats.start();
      if (command.heartbeat_timeout && reported) {
        // A long command: acked once its start report is confirmed, so the broker's consumer
        // timeout cannot cut it off; from here a crash is the orchestrator's to retry.
        this.channel.ack(message);
        settle.taken = true;
      }
      return await withTimeLimit(command, this.pool, (run) =>
        this.execute(command, name, handler, run, fields),
      );
    } catch (err) {
      if (err instanceof TimedOut) {
        return { error: failure('timeout', `stopped after ${command.timeout}s`, true) };
      }
      throw err;
    } finally {
      heartbeats.stop();
    }
  }

  async execute(command, name, handler, run, fields) {
    if (name === 'inventory.reserve' && String(command.payload.order_id).startsWith('slow-')) {
      // The knob of the Python service: a slow warehouse system, waited for before the
      // transaction (an open one would hold a connection and the database's xmin meanwhile).
      await run.sleep(this.slowSeconds);
    }
    const answer =
      command.kind === 'action'
        ? await this.runAction(command, handler, run, fields)
        : await this.runCompensation(command, handler, run, fields);
    if (answer.fresh) this.afterCommit(fields);
    return answer;
  }

  // Sections 3 and 4: claim the action's key, apply the effect and store its reply in one
  // transaction; a business failure is stored in a transaction of its own.
  async runAction(command, handler, run, fields) {
    try {
      return await run.transaction(async (client) => {
        if (!(await barrier.claim(client, command, 'action'))) {
          return this.duplicate(client, command, fields);
        }
        const result = await handler(client, command);
        await barrier.storeSuccess(client, command, result);
        return { result, fresh: true };
      });
    } catch (err) {
      if (!(err instanceof BusinessFailure)) throw err; // rolled back whole: the next try runs again
      const error = failure(err.type, err.message, false);
      return run.transaction(async (client) => {
        if (await barrier.claim(client, command, 'action', { outcome: 'failure', error })) {
          log('failure_stored', { ...fields, error_type: err.type });
          return { error, fresh: true };
        }
        return this.duplicate(client, command, fields); // another delivery got there first
      });
    }
  }

  async duplicate(client, command, fields) {
    const row = await barrier.row(client, command, command.kind);
    if (command.kind === 'action' && row.written_by === 'compensation') {
      log('hanging_action_refused', fields);
      return { error: COMPENSATED_ALREADY };
    }
    log('duplicate_replayed', { ...fields, outcome: row.outcome });
    return storedAnswer(row);
  }

  // Section 5: the marker on the action's key first (it refuses the action if that comes
  // later), then the compensation's own key; nothing to undo when the action never ran or
  // failed. A compensation's failure is never stored: it rolls back whole.
  async runCompensation(command, handler, run, fields) {
    try {
      return await run.transaction(async (client) => {
        const actionMissing = await barrier.claim(client, command, 'action');
        if (!(await barrier.claim(client, command, 'compensation'))) {
          return this.duplicate(client, command, fields);
        }
        const action = actionMissing ? null : await barrier.row(client, command, 'action');
        if (actionMissing || action.written_by !== 'action' || action.outcome !== 'success') {
          log('null_compensation', { ...fields, action_missing: actionMissing });
          await barrier.storeSuccess(client, command, NULL_COMPENSATION);
          return { result: NULL_COMPENSATION, fresh: true };
        }
        const result = await handler(client, command);
        await barrier.storeSuccess(client, command, result);
        return { result, fresh: true };
      });
    } catch (err) {
      if (!(err instanceof BusinessFailure)) throw err;
      return { error: failure(err.type, err.message, false) };
    }
  }

  afterCommit(fields) {
    this.committed += 1;
    const match = /^after_commit_before_reply@(\d+)$/.exec(this.fault || '');
    if (match && this.committed === Number(match[1])) {
      log('fault_point_crash', { ...fields, point: 'after_commit_before_reply' });
      process.kill(process.pid, 'SIGKILL');
    }
  }

  async publish(replyTo, command, answer, outcome = answer.error ? 'failure' : 'success') {
    const body = replyBody(command, outcome, answer);
    await new Promise((resolve, reject) => {
      this.channel.sendToQueue(
        replyTo,
        Buffer.from(JSON.stringify(body)),
        {
          persistent: true,
          contentType: 'application/json',
          messageId: crypto.randomUUID(),
          correlationId: command.command_id,
        },
        (err) => (err ? reject(err) : resolve()),
      );
    });
  }

  async drain() {
    await Promise.allSettled([...this.inFlight]);
  }
}

// Section 7: heartbeats to the command's reply_to while it runs; a failed one is logged and
// tried again at the next interval, never failing the command.
class Heartbeats {
  constructor(worker, replyTo, command, fields) {
    Object.assign(this, { worker, replyTo, command, fields });
    this.timer = null;
    this.stopped = false;
  }

  // Starts the schedule; true when a start report was sent and confirmed.
  async start() {
    const { first, every } = heartbeatSchedule(this.command);
    const reported = first === 0 && (await this.beat()); // before the work begins
    const next = (seconds) => {
      this.timer = setTimeout(async () => {
        await this.beat();
        if (!this.stopped) next(every);
      }, seconds * 1000);
    };
    next(first === 0 ? every : first);
    return reported;
  }

  async beat() {
    if (this.stopped) return false;
    try {
      await this.worker.publish(this.replyTo, this.command, {}, 'heartbeat');
      log('heartbeat_sent', this.fields);
      return true;
    } catch (err) {
      log('heartbeat_failed', { ...this.fields, error: String(err) });
      return false;
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}

// Section 7: the attempt may run `timeout` seconds from its start. When they pass, the work
// is abandoned: an open transaction is rolled back (its connection closed), a wait cut short.
async function withTimeLimit(command, pool, work) {
  const run = new Run(pool);
  if (!command.timeout) return work(run);
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => {
      run.abandon();
      reject(new TimedOut());
    }, command.timeout * 1000);
  });
  try {
    return await Promise.race([work(run), limit]);
  } finally {
    clearTimeout(timer);
  }
}

// The resources of one attempt, so that a time limit can let go of them.
class Run {
  constructor(pool) {
    this.pool = pool;
    this.abandoned = false;
    this.clients = new Set();
    this.wakers = new Set();
  }

  sleep(seconds) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, seconds * 1000);
      this.wakers.add(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async transaction(body) {
    if (this.abandoned) throw new TimedOut();
    const client = await this.pool.connect();
    this.clients.add(client);
    let broken = false;
    try {
      await client.query('BEGIN');
      const out = await body(client);
      if (this.abandoned) throw new TimedOut();
      await client.query('COMMIT');
      return out;
    } catch (err) {
      if (!this.abandoned) await client.query('ROLLBACK').catch(() => (broken = true));
      throw err;
    } finally {
      // An abandoned run has closed its connections already.
      if (this.clients.delete(client)) client.release(broken);
    }
  }

  abandon() {
    this.abandoned = true;
    for (const wake of this.wakers) wake();
    for (const client of this.clients) {
      // Closing the connection ends its transaction on the server: rolled back.
      this.clients.delete(client);
      client.release(true);
    }
  }
}

module.exports = { Worker };
