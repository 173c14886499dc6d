// E2B's own JavaScript Template SDK (the `e2b` package), unchanged, against firebox's template
// service through E2B's control API: a template built with it (COPY, RUN, ENV, a start command
// with E2B's port check) starts with E2B's Sandbox.create, a failing step is E2B's BuildError,
// and its tags are E2B's. Run by tests/e2b/test_js.py with the other JS cases.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { BuildError, Sandbox, Template, waitForPort } from 'e2b'

const NAME = 'fbx-e2b-js-site'

describe('e2b Template', () => {
  let context
  before(() => {
    context = mkdtempSync(join(tmpdir(), 'e2b-js-context-'))
    writeFileSync(join(context, 'index.html'), 'served to js\n')
  })
  after(async () => {
    rmSync(context, { recursive: true, force: true })
    await fetch(`${process.env.E2B_API_URL}/templates/${NAME}`, {
      method: 'DELETE',
      headers: { 'X-API-Key': process.env.E2B_API_KEY },
    })
  })

  test('build, then start it with Sandbox.create', async () => {
    const template = Template({ fileContextPath: context })
      .fromBaseImage()
      .copy('index.html', '/home/user/www/')
      .runCmd('echo built by js > /home/user/built.txt')
      .setEnvs({ GREETING: 'hi from js' })
      .setWorkdir('/home/user/www')
      .setStartCmd('python3 -m http.server 8001', waitForPort(8001))
    const logs = []
    const info = await Template.build(template, NAME, { onBuildLogs: (e) => logs.push(e.message) })
    assert.equal(info.templateId, NAME)
    assert.ok(logs.some((m) => m.includes('RUN echo built by js')), logs.join('\n'))
    assert.equal(await Template.exists(NAME), true)
    const tags = await Template.getTags(NAME)
    assert.deepEqual(tags.map((t) => t.tag), ['latest'])
    assert.equal(tags[0].buildId, info.buildId)

    const sbx = await Sandbox.create(NAME, { timeoutMs: 600_000 })
    try {
      assert.equal((await sbx.commands.run('cat /home/user/built.txt')).stdout, 'built by js\n')
      assert.equal((await sbx.commands.run('echo $GREETING')).stdout, 'hi from js\n')
      const page = await sbx.commands.run('curl -s localhost:8001/index.html')
      assert.equal(page.stdout, 'served to js\n')
    } finally {
      await sbx.kill()
    }
  })

  test('a failing step is a BuildError with the reason', async () => {
    const template = Template().fromTemplate('python').runCmd('echo failing >&2; exit 4')
    await assert.rejects(
      Template.build(template, 'fbx-e2b-js-fails'),
      (e) => e instanceof BuildError && /step 1 .*status 4/.test(e.message),
    )
    assert.equal(await Template.exists('fbx-e2b-js-fails'), false)
  })
})
