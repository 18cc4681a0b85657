'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { greet } = require('../index.js');

test('greets by name', () => {
  assert.equal(greet('cloudx'), 'Hello, cloudx!');
});
