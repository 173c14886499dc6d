// E2B's own JavaScript SDKs (the `e2b` and `@e2b/code-interpreter` packages, pinned in the
// repository's package.json), unchanged, against firebox. Run by tests/e2b/test_js.py under
// node's own test runner with only E2B's environment set (as `firebox e2b env` prints it).
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { CommandExitError, NotFoundError, Sandbox, TimeoutError } from 'e2b'
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter'

describe('e2b', () => {
  let sbx
  before(async () => {
    sbx = await Sandbox.create({ timeoutMs: 600_000, metadata: { suite: 'js' } })
  })
  after(async () => {
    await sbx?.kill()
  })

  test('create, info, list, connect', async () => {
    const info = await sbx.getInfo()
    assert.equal(info.sandboxId, sbx.sandboxId)
    assert.equal(info.templateId, 'python')
    assert.deepEqual(info.metadata, { suite: 'js' })
    const listed = await Sandbox.list({ query: { metadata: { suite: 'js' } } }).nextItems()
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId])
    const again = await Sandbox.connect(sbx.sandboxId)
    assert.equal((await again.commands.run('echo connected')).stdout, 'connected\n')
  })

  test('commands: output, exit codes, background and stdin', async () => {
    const r = await sbx.commands.run('echo out; echo err >&2')
    assert.equal(r.stdout, 'out\n')
    assert.equal(r.stderr, 'err\n')
    await assert.rejects(sbx.commands.run('exit 5'), (e) => e instanceof CommandExitError && e.exitCode === 5)
    const handle = await sbx.commands.run('cat', { background: true, stdin: true })
    await sbx.commands.sendStdin(handle.pid, 'via stdin\n')
    await sbx.commands.closeStdin(handle.pid)
    const done = await handle.wait()
    assert.equal(done.stdout, 'via stdin\n')
    await assert.rejects(sbx.commands.run('sleep 30', { timeoutMs: 1000 }), TimeoutError)
  })

  test('files: write, read, list, remove', async () => {
    await sbx.files.write('/home/user/js/hello.txt', 'hello from js')
    assert.equal(await sbx.files.read('/home/user/js/hello.txt'), 'hello from js')
    const names = (await sbx.files.list('/home/user/js')).map((e) => e.name)
    assert.deepEqual(names, ['hello.txt'])
    assert.equal(await sbx.files.exists('/home/user/js/hello.txt'), true)
    await sbx.files.remove('/home/user/js/hello.txt')
    assert.equal(await sbx.files.exists('/home/user/js/hello.txt'), false)
  })

  test('another key cannot reach the sandbox', async () => {
    const other = process.env.E2B_OTHER_API_KEY
    assert.ok(other, 'the runner passes a second key')
    await assert.rejects(Sandbox.getInfo(sbx.sandboxId, { apiKey: other }), NotFoundError)
  })
})

describe('@e2b/code-interpreter', () => {
  let sbx
  before(async () => {
    sbx = await CodeSandbox.create({ timeoutMs: 600_000 })
  })
  after(async () => {
    await sbx?.kill()
  })

  test('runs python with state, results and errors', async () => {
    await sbx.runCode('x = 21')
    const ex = await sbx.runCode('print("printed"); x * 2')
    assert.deepEqual(ex.logs.stdout, ['printed\n'])
    assert.equal(ex.text, '42')
    const bad = await sbx.runCode('1 / 0')
    assert.equal(bad.error?.name, 'ZeroDivisionError')
  })

  test('runs javascript in its own context', async () => {
    const ctx = await sbx.createCodeContext({ language: 'js' })
    const ex = await sbx.runCode('const a = 2; a + 3', { context: ctx })
    assert.equal(ex.text, '5')
  })
})
