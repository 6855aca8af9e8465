// Runs Meta's capi-param-builder jest test files with a tiny jest stand-in and
// records every (function, input, expected) pair that a test asserts.
const Module = require('module');
const path = require('path');
const fs = require('fs');
const root = process.argv[2];
const files = process.argv.slice(3);
const WATCH = ['getNormalizedEmail','getNormalizedPhone','getNormalizedName','getNormalizedCity',
  'getNormalizedState','getNormalizedCountry','getNormalizedExternalID','getNormalizedZipCode',
  'getNormalizedPII'];
let lastCall = null;
const origLoad = Module._load;
Module._load = function (req, parent, isMain) {
  const m = origLoad.apply(this, arguments);
  if (!req.includes('piiUtil')) return m;
  const wrapped = {};
  for (const [k, v] of Object.entries(m)) {
    if (typeof v === 'function' && WATCH.includes(k)) {
      wrapped[k] = function (...args) {
        let result, threw = false;
        try { result = v.apply(this, args); } catch (e) { threw = true; lastCall = {fn: k, args, threw}; throw e; }
        lastCall = {fn: k, args, result};
        return result;
      };
    } else wrapped[k] = v;
  }
  return wrapped;
};
const out = [];
let failures = 0;
function record(actual, expected, file, title) {
  const c = lastCall; lastCall = null;
  if (!c || c.threw) return;
  if (c.result !== actual) return; // expect() was not given the call's result
  if (!c.args.every(a => typeof a === 'string')) return;
  if (expected !== null && typeof expected !== 'string') return;
  if (actual !== expected) { failures++; return; }
  out.push({source: file, test: title, fn: c.fn, args: c.args, expected});
}
let currentTitle = [];
global.describe = (t, f) => { currentTitle.push(t); f(); currentTitle.pop(); };
const tests = [];
global.test = global.it = (t, f) => tests.push({title: [...currentTitle, t].join(' > '), f});
global.beforeEach = global.afterEach = global.beforeAll = global.afterAll = () => {};
global.jest = { fn: () => () => {}, spyOn: () => ({ mockImplementation(){return this;}, mockRestore(){} }) };
let curFile = '', curTest = '';
global.expect = (actual) => {
  const m = {
    toBe: (e) => record(actual, e, curFile, curTest),
    toEqual: (e) => record(actual, e, curFile, curTest),
    toStrictEqual: (e) => record(actual, e, curFile, curTest),
    toBeNull: () => record(actual, null, curFile, curTest),
    toBeUndefined(){}, toBeDefined(){}, toThrow(){}, toContain(){}, toMatch(){}, toHaveLength(){},
    toBeTruthy(){}, toBeFalsy(){}, toBeGreaterThan(){}, toBeLessThan(){}, toHaveBeenCalled(){},
    toBeLessThanOrEqual(){}, toBeGreaterThanOrEqual(){}, toHaveBeenCalledWith(){},
  };
  m.not = new Proxy({}, {get: () => () => { lastCall = null; }});
  return m;
};
for (const f of files) {
  curFile = path.relative(root, f);
  require(path.resolve(f));
  for (const t of tests.splice(0)) {
    curTest = t.title;
    try { t.f(); } catch (e) { process.stderr.write(`skip ${curFile} ${t.title}: ${e.message}\n`); }
  }
}
process.stderr.write(`recorded ${out.length}, mismatches ${failures}\n`);
process.stdout.write(JSON.stringify(out, null, 0));
