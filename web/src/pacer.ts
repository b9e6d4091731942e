// Client-side token buckets a little under the server's per-session rate
// limits (docs/protocol.md, "Limits"), so that joining a thousand rooms or
// catching up after a reconnect is spread out instead of refused: the
// server closes a session that collects 200 `rate_limited` answers in 10 s.

export interface Rate {
  perSecond: number;
  burst: number;
}

export class Bucket {
  private tokens: number;
  private at: number;

  constructor(
    private readonly rate: Rate,
    now: number,
  ) {
    this.tokens = rate.burst;
    this.at = now;
  }

  private refill(now: number): void {
    if (now > this.at) {
      this.tokens = Math.min(this.rate.burst, this.tokens + ((now - this.at) / 1000) * this.rate.perSecond);
      this.at = now;
    }
  }

  /** Ms until a token is there (0: now). */
  waitMs(now: number): number {
    this.refill(now);
    return this.tokens >= 1 ? 0 : Math.ceil(((1 - this.tokens) / this.rate.perSecond) * 1000);
  }

  take(now: number): void {
    this.refill(now);
    this.tokens -= 1;
  }
}

interface Job {
  key: string;
  costs: Bucket[];
  run: () => void;
}

/** Runs jobs in order as their buckets allow; a job is queued once per key. */
export class Pacer {
  private queue: Job[] = [];
  private timer: ReturnType<typeof setTimeout> | null = null;
  private running = false;

  constructor(private readonly now: () => number = Date.now) {}

  add(key: string, costs: Bucket[], run: () => void, first = false): void {
    const i = this.queue.findIndex((j) => j.key === key);
    if (i >= 0) {
      if (!first || i === 0) return;
      this.queue.splice(i, 1);
    }
    const job = { key, costs, run };
    if (first) this.queue.unshift(job);
    else this.queue.push(job);
    this.pump();
  }

  has(key: string): boolean {
    return this.queue.some((j) => j.key === key);
  }

  size(): number {
    return this.queue.length;
  }

  /** Drops every queued job (the connection is gone). */
  clear(): void {
    this.queue = [];
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private pump(): void {
    if (this.timer || this.running) return;
    this.running = true;
    try {
      this.drain();
    } finally {
      this.running = false;
    }
  }

  private drain(): void {
    while (this.queue.length) {
      const now = this.now();
      const job = this.queue[0];
      const wait = Math.max(...job.costs.map((b) => b.waitMs(now)), 0);
      if (wait > 0) {
        this.timer = setTimeout(() => {
          this.timer = null;
          this.pump();
        }, wait);
        return;
      }
      for (const b of job.costs) b.take(now);
      this.queue.shift();
      job.run();
    }
  }
}
