'use strict';
// The barrier table of docs/protocol-idempotency.md, section 3, in a schema of this service's
// own (`node_inventory`) in the shop's database: one row per (saga_id, step, kind), written in
// the same transaction as the effect it records.

const SCHEMA = process.env.NODE_INVENTORY_SCHEMA || 'node_inventory';
const TABLE = `${SCHEMA}.saga_barrier`;

const DDL = `
CREATE SCHEMA IF NOT EXISTS ${SCHEMA};
CREATE TABLE IF NOT EXISTS ${TABLE} (
    saga_id    uuid        NOT NULL,
    step       text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('action', 'compensation')),
    written_by text        NOT NULL,
    command_id uuid        NOT NULL,
    outcome    text        CHECK (outcome IN ('success', 'failure')),
    result     jsonb,
    error      jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step, kind)
);
CREATE INDEX IF NOT EXISTS saga_barrier_created_at ON ${TABLE} (created_at);
`;

// CREATE ... IF NOT EXISTS is not safe against a concurrent creator (two processes starting
// at once): the advisory lock makes the second wait, then find everything in place.
async function install(pool) {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query("SELECT pg_advisory_xact_lock(hashtextextended('node_inventory.barrier', 0))");
    await client.query(DDL);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    client.release();
  }
}

// Insert the row of (command's saga and step, `kind`), written by the command; true when this
// transaction owns it, false when it existed (a concurrent insert waits for the other
// transaction to end first).
async function claim(client, command, kind, { outcome = null, error = null } = {}) {
  const inserted = await client.query(
    `INSERT INTO ${TABLE} (saga_id, step, kind, written_by, command_id, outcome, error)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT DO NOTHING
     RETURNING kind`,
    [
      command.saga_id,
      command.step,
      kind,
      command.kind,
      command.command_id,
      outcome,
      error === null ? null : JSON.stringify(error),
    ],
  );
  return inserted.rowCount === 1;
}

// The row, read by a statement of its own: under READ COMMITTED only a new statement sees
// what the transaction the insert waited for committed.
async function row(client, command, kind) {
  const found = await client.query(
    `SELECT written_by, outcome, result, error FROM ${TABLE}
      WHERE saga_id = $1 AND step = $2 AND kind = $3`,
    [command.saga_id, command.step, kind],
  );
  return found.rows[0] || null;
}

async function storeSuccess(client, command, result) {
  await client.query(
    `UPDATE ${TABLE} SET outcome = 'success', result = $4
      WHERE saga_id = $1 AND step = $2 AND kind = $3`,
    [command.saga_id, command.step, command.kind, JSON.stringify(result)],
  );
}

module.exports = { SCHEMA, TABLE, install, claim, row, storeSuccess };
