// Checks that the committed dist/ is exactly what `npm run build` makes
// from the current sources, and that the bundle stays within its budget.
// Builds into a temporary directory; the work tree is not touched.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { gzipSync } from 'node:zlib';

const BUDGET_GZIP_BYTES = 250 * 1024;
const web = new URL('..', import.meta.url).pathname;
const dist = join(web, 'dist');

function files(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...files(path));
    else out.push(path);
  }
  return out;
}

const tmp = mkdtempSync(join(tmpdir(), 'viche-web-dist-'));
let failed = false;
try {
  execFileSync('npx', ['vite', 'build', '--logLevel', 'warn', '--outDir', tmp, '--emptyOutDir'], { cwd: web, stdio: 'inherit' });
  const fresh = files(tmp).map((f) => relative(tmp, f)).sort();
  const committed = files(dist).map((f) => relative(dist, f)).sort();
  if (JSON.stringify(fresh) !== JSON.stringify(committed)) {
    console.error(`web/dist is out of date.\n  built:     ${fresh.join(', ')}\n  committed: ${committed.join(', ')}`);
    failed = true;
  } else {
    for (const f of fresh) {
      if (!readFileSync(join(tmp, f)).equals(readFileSync(join(dist, f)))) {
        console.error(`web/dist/${f} differs from a fresh build.`);
        failed = true;
      }
    }
  }
  let gz = 0;
  for (const f of committed) gz += gzipSync(readFileSync(join(dist, f)), { level: 9 }).length;
  console.log(`web/dist: ${committed.length} files, ${(gz / 1024).toFixed(1)} KiB gzipped (budget ${BUDGET_GZIP_BYTES / 1024} KiB)`);
  if (gz > BUDGET_GZIP_BYTES) {
    console.error('web/dist is over its size budget.');
    failed = true;
  }
} finally {
  rmSync(tmp, { recursive: true, force: true });
}
if (failed) {
  console.error('Run `npm run build` in web/ and commit web/dist.');
  process.exit(1);
}
console.log('web/dist is up to date.');
