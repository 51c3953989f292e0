'use strict';
// One JSON object per line on stdout, like the Python services' logs (SAGA_LOG_FORMAT=json):
// `event` names what happened, the other keys say to what.

function log(event, fields = {}) {
  const line = { event, service: 'inventory', timestamp: new Date().toISOString(), ...fields };
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

module.exports = { log };
