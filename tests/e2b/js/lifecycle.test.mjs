// E2B's own JavaScript SDK (the `e2b` package), unchanged, pausing, resuming, snapshotting and
// forking firebox sandboxes through E2B's control API: what its docs show works as there.
// Run by tests/e2b/test_js.py with the other JS cases.
import assert from 'node:assert/strict'
import { describe, test } from 'node:test'

import { Sandbox } from 'e2b'

describe('e2b Sandbox lifecycle', () => {
  test('pause, connect resumes, files and processes kept', async () => {
    const sbx = await Sandbox.create({ timeoutMs: 600_000 })
    try {
      await sbx.files.write('/home/user/kept.txt', 'kept by js')
      const bg = await sbx.commands.run('sleep 600', { background: true })
      assert.equal(await sbx.pause(), true)
      assert.equal(await sbx.pause(), false) // already paused: E2B's 409
      const info = await Sandbox.getInfo(sbx.sandboxId)
      assert.equal(info.state, 'paused')
      const again = await Sandbox.connect(sbx.sandboxId)
      assert.equal(await again.files.read('/home/user/kept.txt'), 'kept by js')
      const pids = (await again.commands.list()).map((p) => p.pid)
      assert.ok(pids.includes(bg.pid), `${bg.pid} not in ${pids}`)
    } finally {
      await sbx.kill()
    }
  })

  test('createSnapshot, Sandbox.create from it, fork, deleteSnapshot', async () => {
    const sbx = await Sandbox.create({ timeoutMs: 600_000 })
    try {
      await sbx.files.write('/tmp/saved.txt', 'in the snapshot')
      const snap = await sbx.createSnapshot()
      assert.ok(snap.snapshotId)
      const made = await Sandbox.create(snap.snapshotId, { timeoutMs: 300_000 })
      try {
        assert.equal(await made.files.read('/tmp/saved.txt'), 'in the snapshot')
      } finally {
        await made.kill()
      }
      const forks = await sbx.fork({ count: 2 })
      assert.equal(forks.length, 2)
      for (const f of forks) {
        assert.ok(!(f instanceof Error), String(f))
        assert.equal(await f.files.read('/tmp/saved.txt'), 'in the snapshot')
        await f.kill()
      }
      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
    } finally {
      await sbx.kill()
    }
  })
})
