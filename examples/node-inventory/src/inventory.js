'use strict';
// The inventory service's business writes, on the shop's own tables (examples/shop/schema.py):
// the same rows the Python inventory service writes, so the shop's checks
// (examples/shop/verify.py) hold whichever of the two served a command. Each function runs
// inside the barrier's transaction, on its client.

class BusinessFailure extends Error {
  // A business answer a retry cannot change (section 8): non-retryable.
  constructor(type, message) {
    super(message);
    this.type = type;
  }
}

const bySku = (a, b) => (String(a.sku) < String(b.sku) ? -1 : String(a.sku) > String(b.sku) ? 1 : 0);

async function recordEffect(client, command, name) {
  await client.query(
    'INSERT INTO shop.effects (command, saga_id, order_id) VALUES ($1, $2, $3)',
    [name, command.saga_id, String(command.payload.order_id)],
  );
}

// inventory.reserve: take every line's quantity off the stock (in a fixed order, so two
// reservations never deadlock) and keep the reservation; out of stock is a business failure.
async function reserve(client, command) {
  const items = command.payload.items;
  for (const item of [...items].sort(bySku)) {
    const taken = await client.query(
      'UPDATE shop.stock SET qty = qty - $2 WHERE sku = $1 AND qty >= $2 RETURNING qty',
      [item.sku, item.qty],
    );
    if (taken.rowCount === 0) {
      throw new BusinessFailure('out_of_stock', `not enough ${item.sku}`);
    }
  }
  const reservation = await client.query(
    'INSERT INTO shop.stock_reservations (saga_id, lines) VALUES ($1, $2) RETURNING id',
    [command.saga_id, JSON.stringify(items)],
  );
  await recordEffect(client, command, 'inventory.reserve');
  return { reserved: items.length, reservation_id: Number(reservation.rows[0].id) };
}

// inventory.release: put the reservation's lines back. The reservation is the one the action
// answered with (`action_result.reservation_id`, when the orchestrator sends the action's
// result along), else the saga's unreleased ones.
async function release(client, command) {
  const reservationId = command.action_result?.reservation_id;
  const released =
    reservationId !== undefined && reservationId !== null
      ? await client.query(
          `UPDATE shop.stock_reservations SET released_at = now()
            WHERE id = $1 AND saga_id = $2 AND released_at IS NULL RETURNING lines`,
          [reservationId, command.saga_id],
        )
      : await client.query(
          `UPDATE shop.stock_reservations SET released_at = now()
            WHERE saga_id = $1 AND released_at IS NULL RETURNING lines`,
          [command.saga_id],
        );
  if (released.rowCount === 0) {
    // The barrier runs a compensation only after its action succeeded: an empty release means
    // the data was changed behind the shop's back. An operator must look.
    throw new BusinessFailure(
      'nothing_to_undo',
      `inventory.release: no reservation of saga ${command.saga_id} is held, yet its action succeeded`,
    );
  }
  const lines = released.rows.flatMap((r) => r.lines);
  for (const item of [...lines].sort(bySku)) {
    await client.query('UPDATE shop.stock SET qty = qty + $2 WHERE sku = $1', [item.sku, item.qty]);
  }
  await recordEffect(client, command, 'inventory.release');
  return { released: lines.length };
}

const HANDLERS = { 'inventory.reserve': reserve, 'inventory.release': release };

module.exports = { BusinessFailure, HANDLERS };
