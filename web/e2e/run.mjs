// `npm run e2e`: builds viche if needed, then runs the browser scenarios
// (e2e/*.spec.mjs, node's test runner, one file at a time). Exits non-zero
// when anything fails.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { BIN, OUT, ROOT, WEB } from './harness.mjs';

function run(cmd, args, cwd) {
  console.log(`$ ${cmd} ${args.join(' ')}`);
  const r = spawnSync(cmd, args, { cwd, stdio: 'inherit', env: process.env });
  if (r.status !== 0) {
    console.error(`${cmd} failed (${r.status ?? r.signal})`);
    process.exit(1);
  }
}

if (!process.env.VICHE_BIN) run('cargo', ['build', '--bin', 'viche'], ROOT);
if (!existsSync(BIN)) {
  console.error(`no viche binary at ${BIN}`);
  process.exit(1);
}
if (!existsSync(join(WEB, 'dist', 'index.html'))) run('npm', ['run', 'build'], WEB);
const chromium = process.env.CHROMIUM ?? '/usr/bin/chromium';
if (!existsSync(chromium)) {
  console.error(`no Chromium at ${chromium}: apt-get install -y chromium (or set CHROMIUM)`);
  process.exit(1);
}

const only = process.argv.slice(2);
const specs = readdirSync(join(WEB, 'e2e'))
  .filter((f) => f.endsWith('.spec.mjs'))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort()
  .map((f) => join('e2e', f));
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=spec', ...specs], {
  cwd: WEB,
  stdio: 'inherit',
  env: process.env,
});
console.log(`screenshots and timings: ${OUT}`);
process.exit(r.status ?? 1);
