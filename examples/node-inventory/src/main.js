'use strict';
// The example shop's inventory service in plain Node.js: `node src/main.js`.
//
// Environment (the names the Python services read): SHOP_DATABASE_URL (the shop's database;
// a SQLAlchemy `postgresql+psycopg://` URL is accepted), SAGA_AMQP_URL, SAGA_AMQP_PREFIX (the
// deployment's prefix of exchange and queue names), SHOP_SLOW_SECONDS (how long `slow-`
// orders stall in inventory.reserve), SAGA_PREFETCH (commands handled at once), and
// NODE_INVENTORY_FAULT=after_commit_before_reply@N for crash tests.
//
// A lost broker or database connection ends the process (exit 1) after the commands in hand
// are settled or abandoned: its supervisor restarts it, and the broker redelivers whatever
// was not acked.

const amqp = require('amqplib');
const { Pool } = require('pg');
const barrier = require('./barrier');
const { log } = require('./log');
const { Worker } = require('./worker');

const SERVICE = 'inventory';
const DELIVERY_LIMIT = 10;

function env(name, fallback) {
  const value = process.env[name];
  return value === undefined || value === '' ? fallback : value;
}

const prefix = env('SAGA_AMQP_PREFIX', '');
const names = {
  commands: `${prefix}saga.commands`,
  dead: `${prefix}saga.dead`,
  queue: `${prefix}commands.${SERVICE}`,
};

// The queue's arguments exactly as every other declarer computes them
// (x-amqp-arguments of commandQueue in docs/protocol/asyncapi.json): RabbitMQ refuses a
// re-declaration whose arguments differ.
const queueArguments = {
  'x-queue-type': 'quorum',
  'x-delivery-limit': DELIVERY_LIMIT,
  'x-dead-letter-exchange': names.dead,
  'x-dead-letter-strategy': 'at-least-once',
  'x-overflow': 'reject-publish',
};

async function main() {
  const databaseUrl = env('SHOP_DATABASE_URL', 'postgresql://postgres@127.0.0.1:5432/saga_shop');
  const pool = new Pool({
    connectionString: databaseUrl.replace(/^postgresql\+\w+:/, 'postgresql:'),
    max: 5,
  });
  pool.on('error', (err) => log('database_connection_lost', { error: String(err) }));
  await barrier.install(pool);

  const connection = await amqp.connect(env('SAGA_AMQP_URL', 'amqp://guest:guest@127.0.0.1:5672/'));
  const channel = await connection.createConfirmChannel();
  // The service may come up before the orchestrator: it declares what its queue needs.
  await channel.assertExchange(names.commands, 'topic', { durable: true });
  await channel.assertExchange(names.dead, 'fanout', { durable: true });
  await channel.assertQueue(names.queue, { durable: true, arguments: queueArguments });
  await channel.bindQueue(names.queue, names.commands, `${SERVICE}.#`);
  await channel.prefetch(Number(env('SAGA_PREFETCH', '10')));

  const worker = new Worker({
    pool,
    channel,
    slowSeconds: Number(env('SHOP_SLOW_SECONDS', '2')),
    fault: env('NODE_INVENTORY_FAULT', null),
  });
  const { consumerTag } = await channel.consume(names.queue, (message) => {
    if (message !== null) worker.onMessage(message);
  });
  log('node_inventory_started', { queue: names.queue, pid: process.pid });

  let stopping = false;
  const stop = async (code, why) => {
    if (stopping) return;
    stopping = true;
    log('node_inventory_stopping', { why });
    await channel.cancel(consumerTag).catch(() => {});
    await worker.drain();
    await channel.close().catch(() => {});
    await connection.close().catch(() => {});
    await pool.end().catch(() => {});
    process.exit(code);
  };
  process.on('SIGTERM', () => stop(0, 'SIGTERM'));
  process.on('SIGINT', () => stop(0, 'SIGINT'));
  connection.on('close', () => stop(1, 'broker connection closed'));
  channel.on('close', () => stop(1, 'channel closed'));
  connection.on('error', (err) => log('broker_connection_error', { error: String(err) }));
  channel.on('error', (err) => log('channel_error', { error: String(err) }));
}

main().catch((err) => {
  log('node_inventory_failed', { error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
