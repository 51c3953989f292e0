'use strict';
// Wire protocol v1, read from its JSON Schemas (docs/protocol/): what a command must look like,
// what a reply and a heartbeat must look like, and the timing rules of
// docs/protocol-idempotency.md (expiry, section 6; heartbeats, section 7).

const path = require('node:path');
const Ajv2020 = require('ajv/dist/2020');
const addFormats = require('ajv-formats');

const PROTOCOL_DIR =
  process.env.SAGA_PROTOCOL_DIR || path.resolve(__dirname, '..', '..', '..', 'docs', 'protocol');

const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);

function compile(file) {
  return ajv.compile(require(path.join(PROTOCOL_DIR, file)));
}

const validators = {
  command: compile('command.schema.json'),
  reply: compile('reply.schema.json'),
  heartbeat: compile('heartbeat.schema.json'),
};

function describe(validate) {
  return ajv.errorsText(validate.errors, { dataVar: 'body' });
}

// The command in a delivery, or `{ problem }`: not JSON, not a command by its schema, or no
// `reply_to` to answer to. Such a message is dead-lettered unanswered (section 2).
function parseCommand(message) {
  if (message.properties.contentType !== 'application/json') {
    return { problem: `content type ${message.properties.contentType} is not application/json` };
  }
  let body;
  try {
    body = JSON.parse(message.content.toString('utf8'));
  } catch (err) {
    return { problem: `body is not JSON: ${err.message}` };
  }
  if (!validators.command(body)) {
    return { problem: `not a command: ${describe(validators.command)}` };
  }
  if (!message.properties.replyTo) {
    return { problem: 'no reply_to property: nowhere to answer' };
  }
  return { command: body, name: message.fields.routingKey, replyTo: message.properties.replyTo };
}

// A reply's body, checked against its schema before it leaves: a body the orchestrator would
// dead-letter is a bug here, and stops this process rather than go out.
function replyBody(command, outcome, { result, error } = {}) {
  const body = { command_id: command.command_id, saga_id: command.saga_id, step: command.step };
  body.outcome = outcome;
  if (result !== undefined && result !== null) body.result = result;
  if (error !== undefined) body.error = error;
  const validate = outcome === 'heartbeat' ? validators.heartbeat : validators.reply;
  if (!validate(body)) {
    throw new Error(`refusing to send an invalid ${outcome}: ${describe(validate)}`);
  }
  return body;
}

function failure(type, message, retryable) {
  return { type, message, retryable };
}

// Section 6: a command received at or after `expires_at` is refused, not executed.
function expiredError(command, now = new Date()) {
  const expires = new Date(command.expires_at);
  if (now < expires) return null;
  return failure(
    'expired',
    `command expired at ${command.expires_at}, received at ${now.toISOString()}; not executed`,
    true,
  );
}

const clamp = (seconds) => Math.max(0.05, Math.min(10, seconds));

// Section 7: seconds until the first heartbeat (0 with `report_start`), then between two.
function heartbeatSchedule(command, now = new Date()) {
  const first = command.report_start
    ? 0
    : clamp((new Date(command.expires_at) - now) / 1000 / 3);
  const every = command.heartbeat_timeout
    ? command.heartbeat_timeout / 3
    : clamp((command.timeout ?? 30) / 3);
  return { first, every };
}

module.exports = {
  PROTOCOL_DIR,
  parseCommand,
  replyBody,
  failure,
  expiredError,
  heartbeatSchedule,
};
