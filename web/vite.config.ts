import react from '@vitejs/plugin-react';
import { defineConfig } from 'vitest/config';

// `npm run build` writes dist/, which is committed: viche serves it at `/`
// (see web/README.md). Keep the output deterministic: no source maps, no
// timestamps, content-hashed asset names.
export default defineConfig({
  plugins: [react()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2022',
    reportCompressedSize: true,
  },
  server: {
    proxy: {
      '/api': 'http://127.0.0.1:8080',
      '/ws': { target: 'ws://127.0.0.1:8080', ws: true },
    },
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.{ts,tsx}'],
  },
});
